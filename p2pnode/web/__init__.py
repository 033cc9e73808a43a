# The owner's web app, served by `p2pnode run` (issue 12): access rules, pages, the ASGI app.
