"""Identity domains (assigning authorities) over HTTP: list, register, remove."""

from __future__ import annotations

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import operation
from mpi.api.resources.common import json_body, send
from mpi.domain.access import ADMIN
from mpi.domain.domains import IdentityDomain, IdentityDomainInput, IdentityDomainList
from mpi.patients.domains import DomainService

BASE = "/api/v1/domains"


class DomainCollection:
    def __init__(self, domains: DomainService):
        self._domains = domains

    @requires(ADMIN)
    @operation("The registered identity domains", tags=["administration"],
               responses={200: ("Every domain, by system", IdentityDomainList)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send(resp, IdentityDomainList(items=self._domains.all(actor_for(req))))

    @requires(ADMIN)
    @operation("Register an identity domain", tags=["administration"],
               request=IdentityDomainInput,
               responses={201: ("Registered", IdentityDomain),
                          400: ("The body is not JSON", None),
                          409: ("The system is registered already", None),
                          415: ("The body is not application/json", None),
                          422: ("A field is invalid; each one is named", None)},
               response_headers={201: ("Location",)})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        made = self._domains.add(self._domains.parse(req.context.body), actor_for(req))
        resp.location = f"{BASE}/{made.id}"
        send(resp, made, falcon.HTTP_201)


class DomainItem:
    def __init__(self, domains: DomainService):
        self._domains = domains

    @requires(ADMIN)
    @operation("Remove an identity domain", tags=["administration"],
               responses={204: ("Removed (its identifiers stay on the records)", None),
                          404: ("No such domain", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain_id: object) -> None:
        self._domains.remove(str(domain_id), actor_for(req))
        resp.status = falcon.HTTP_204
