"""A stand-in for a person at a browser, for programs that call `webbrowser.open(login_url)`:
run as the `BROWSER` command (`python oauth_browser.py %s`), it signs in at the provider as
`OAUTH_USER` (oidc_support.browser_login), then visits the URL the provider sends it back to,
as a browser would."""

import os
import sys

import httpx2 as httpx

from oidc_support import browser_login

callback = browser_login(sys.argv[1], os.environ.get("OAUTH_USER", "dana"))
httpx.get(callback, timeout=10).raise_for_status()
