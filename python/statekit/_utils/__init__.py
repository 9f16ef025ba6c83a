"""Private helpers shared by statekit modules. Never imported by users; no stable API."""
