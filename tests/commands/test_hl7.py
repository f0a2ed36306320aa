"""``mpi hl7 sender add|list|remove`` as an operator runs them: audited, and mistakes one
line each naming the field."""

from __future__ import annotations

from tests.test_cli import run


def test_sender_add_list_remove_and_mistakes(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db",
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "LOG_LEVEL": "WARNING"}
    made = run("hl7", "sender", "add", "lab-feed", "--application", "LABSYS", "--facility",
               "CENTRAL LAB", "--sources", "lab", "--scope", "system/Patient.rs",
               "--certificate", "labsys.example.org", "--by", "alice", env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == ("lab-feed\tLABSYS^CENTRAL LAB\tsources lab\t"
                                   "scopes system/Patient.rs\tcertificate CN=labsys.example.org")
    bad = run("hl7", "sender", "add", "x", "--application", "A|B", "--facility", "F",
              "--sources", "a b", "--scope", "user/Patient.r", env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "mpi hl7 sender add: application: an HL7 namespace id: 1-64 letters, digits, spaces, "
        "'.', '_', ':', '/' or '-'",
        "mpi hl7 sender add: scopes: 'user/Patient.r': only system/ scopes grant anything here",
        "mpi hl7 sender add: sources: 'a b' is not a source name (letters, digits, '.', '_', "
        "':' or '-'; or * for any)"]
    twice = run("hl7", "sender", "add", "other", "--application", "LABSYS", "--facility",
                "CENTRAL LAB", "--sources", "lab", env=env)
    assert twice.returncode == 1
    assert twice.stderr.strip() == "mpi hl7 sender add: a sender LABSYS at CENTRAL LAB exists"
    assert run("hl7", "sender", "remove", "lab-feed", "--by", "alice", env=env).returncode == 0
    assert run("hl7", "sender", "list", env=env).stdout == ""
    gone = run("hl7", "sender", "remove", "lab-feed", env=env)
    assert gone.returncode == 1
    assert gone.stderr.strip() == "mpi hl7 sender remove: no sender named 'lab-feed'"
