#!/bin/sh
# Entrypoint of the mpi-postgres image: the official `postgres` image's contract in POSIX sh
# (run by dash, using only its builtins and the PostgreSQL binaries).
#
# Environment: POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
# POSTGRES_USER (default postgres), POSTGRES_DB (default: the user), POSTGRES_INITDB_ARGS,
# POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256); each of the
# first four may come from a file named by the same variable with a _FILE suffix.
#
# On first start (no $PGDATA/PG_VERSION) it runs initdb, lets every host connect with a
# password, runs a temporary server on the Unix socket only, creates POSTGRES_DB, runs
# /docker-entrypoint-initdb.d/*.sql and *.sh, and stops it. Then it execs the command
# (default `postgres`; arguments starting with `-` are passed to postgres).
#
# Unlike the official image, it starts as uid 999 (postgres) rather than root, so it cannot
# chown a data directory: a bind-mounted PGDATA must be owned by 999.
set -eu

log() {
	printf '%s\n' "$*"
}

fail() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# file_env VAR [DEFAULT]: VAR from itself, else from the file named by VAR_FILE, else DEFAULT.
file_env() {
	fe_var=$1
	eval "fe_value=\${$fe_var-} fe_file=\${${fe_var}_FILE-}"
	if [ -n "$fe_value" ] && [ -n "$fe_file" ]; then
		fail "both $fe_var and ${fe_var}_FILE are set (but are exclusive)"
	fi
	if [ -n "$fe_file" ]; then
		[ -r "$fe_file" ] || fail "${fe_var}_FILE: cannot read $fe_file"
		# Like $(cat file): the whole file, trailing newlines removed.
		fe_value=$(while IFS= read -r fe_line || [ -n "$fe_line" ]; do
			printf '%s\n' "$fe_line"
		done <"$fe_file")
	fi
	[ -n "$fe_value" ] || fe_value=${2-}
	export "$fe_var=$fe_value"
	unset "${fe_var}_FILE"
}

# want_help ARG...: whether postgres is asked for help or its version, not to run.
want_help() {
	for wh_arg; do
		case $wh_arg in
		'-?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

# sh_quote ARG...: the arguments as one string that sh reads back as the same words.
sh_quote() {
	sq_out=
	for sq_arg; do
		sq_word=
		while :; do
			case $sq_arg in
			*\'*)
				sq_word="$sq_word${sq_arg%%\'*}'\\''"
				sq_arg=${sq_arg#*\'}
				;;
			*) break ;;
			esac
		done
		sq_out="$sq_out '$sq_word$sq_arg'"
	done
	printf '%s' "$sq_out"
}

# The effective uid, from the kernel (the image has no `id`).
effective_uid() {
	while read -r eu_key eu_real eu_effective eu_rest; do
		if [ "$eu_key" = Uid: ]; then
			printf '%s' "$eu_effective"
			return
		fi
	done </proc/self/status
}

setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	: "${POSTGRES_INITDB_WALDIR:=}"
	export POSTGRES_HOST_AUTH_METHOD
}

fail_no_password() {
	printf '%s\n' >&2 \
		'error: Database is uninitialized and superuser password is not specified.' \
		'       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value for' \
		'       the superuser, or POSTGRES_HOST_AUTH_METHOD=trust to let every connection in' \
		'       without a password (not recommended).'
	exit 1
}

verify_minimum_env() {
	if [ "$(effective_uid)" = 0 ]; then
		fail "PostgreSQL does not run as root: run this image as its default user 999" \
			"(postgres), with a data directory owned by 999"
	fi
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		fail_no_password
	fi
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		log "WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every host may connect as any user" \
			"without a password."
	fi
	if [ -e "$PGDATA" ] && ! [ -w "$PGDATA" ]; then
		fail "PGDATA ($PGDATA) is not writable by uid 999 (postgres): chown 999:999 the" \
			"volume or bind mount"
	fi
}

init_database_dir() {
	if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
		set -- --waldir "$POSTGRES_INITDB_WALDIR" "$@"
	fi
	if [ -n "$POSTGRES_PASSWORD" ]; then
		set -- --pwfile=/dev/stdin "$@"
	fi
	# POSTGRES_INITDB_ARGS is word-split by the shell, as in the official image.
	printf '%s\n' "$POSTGRES_PASSWORD" | eval 'initdb --username="$POSTGRES_USER" \
		--auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" "$@" '"$POSTGRES_INITDB_ARGS"
}

setup_hba_conf() {
	{
		printf '\n'
		if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
			printf '# warning trust is enabled for all connections\n'
		fi
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >>"$PGDATA/pg_hba.conf"
}

# process_sql ARG...: psql as POSTGRES_USER over the Unix socket, stopping at the first error.
process_sql() {
	if [ -n "$POSTGRES_DB" ]; then
		set -- --dbname "$POSTGRES_DB" "$@"
	fi
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
		--no-psqlrc "$@"
}

# temp_server_start [postgres] ARG...: a server for set-up, on the Unix socket only.
temp_server_start() {
	if [ "${1-}" = postgres ]; then
		shift
	fi
	set -- "$@" -c listen_addresses= -p "${PGPORT:-5432}"
	PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$(sh_quote "$@")" -w start
}

temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

setup_db() {
	sd_exists=$(POSTGRES_DB= process_sql --dbname postgres --set db="$POSTGRES_DB" \
		--tuples-only <<-'EOSQL'
			SELECT 1 FROM pg_database WHERE datname = :'db' ;
		EOSQL
	)
	if [ -z "$sd_exists" ]; then
		POSTGRES_DB= process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
		printf '\n'
	fi
}

# process_init_files FILE...: run *.sh (executable) or source them, run *.sql with psql.
process_init_files() {
	for pi_file; do
		case $pi_file in
		*.sh)
			if [ -x "$pi_file" ]; then
				log "$0: running $pi_file"
				"$pi_file"
			else
				log "$0: sourcing $pi_file"
				. "$pi_file"
			fi
			;;
		*.sql)
			log "$0: running $pi_file"
			process_sql -f "$pi_file"
			printf '\n'
			;;
		*.sql.gz | *.sql.xz | *.sql.bz2 | *.sql.zst)
			fail "$pi_file: this image has no decompressors; decompress it to a .sql file"
			;;
		*/\*) ;; # the pattern itself: the directory is empty
		*) log "$0: ignoring $pi_file" ;;
		esac
	done
}

main() {
	case ${1-} in
	-*) set -- postgres "$@" ;;
	esac

	if [ "${1-}" = postgres ] && ! want_help "$@"; then
		setup_env
		if [ -s "$PGDATA/PG_VERSION" ]; then
			log
			log 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
			log
		else
			verify_minimum_env
			init_database_dir
			setup_hba_conf
			# For psql when POSTGRES_INITDB_ARGS makes local connections ask for a password.
			export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
			temp_server_start "$@"
			setup_db
			process_init_files /docker-entrypoint-initdb.d/*
			temp_server_stop
			unset PGPASSWORD
			log
			log 'PostgreSQL init process complete; ready for start up.'
			log
		fi
	fi
	exec "$@"
}

main "$@"
