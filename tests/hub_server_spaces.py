"""`FakeHub` (tests/hub_server.py) with Spaces: the `/api/spaces/...` routes of `create_repo(repo_type="space")` and
`upload_folder(repo_type="space")`, served by the model routes on the same in-memory store.

`hub.created` records each create request's JSON (`type`, `sdk`, `private`, ...) by repo id, so a test can check
that a Space, and not a model repository, was made.
"""

import json

from hub_server import USER, FakeHub


class FakeSpacesHub(FakeHub):
    def __init__(self):
        super().__init__()
        self.created: dict[str, dict] = {}
        hub, base = self, self.server.RequestHandlerClass

        class Handler(base):
            def _route(self):
                path = super()._route()
                if path.startswith("/api/spaces/"):
                    return "/api/models/" + path[len("/api/spaces/"):]
                return path

            def _body(self):
                body = super()._body()
                if self.path.split("?")[0] == "/api/repos/create":
                    data = json.loads(body or b"{}")
                    hub.created[f"{data.get('organization') or USER}/{data['name']}"] = data
                return body

        self.server.RequestHandlerClass = Handler
