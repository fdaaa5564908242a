"""The control plane's outward side: `api` (slirp4netns's JSON API socket),
`portfwd` (published ports handed to the engine), `report` (flow lines and
the traffic summary).
"""
