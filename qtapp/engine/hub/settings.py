"""Where the Hub is and who we are there.

    endpoint() -> str             the Hub's base URL: set_endpoint's value, else HF_ENDPOINT,
                                  else https://huggingface.co
    set_endpoint(url | None)      a mirror (https://hf-mirror.com …) for this process and the
                                  job workers it starts (it sets HF_ENDPOINT); None: the default
    token() -> str | None         the token huggingface-hub stores (`hf auth login`) or HF_TOKEN

Every Hub call of QuantDesk passes ``endpoint()`` explicitly: huggingface-hub reads
HF_ENDPOINT once, when it is imported (huggingface_hub.constants.ENDPOINT), so a later change
would not reach it. The system proxy needs no setting: huggingface-hub's HTTP client (httpx)
reads HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and on Windows and macOS the system settings,
through urllib.request.getproxies).
"""

from qtapp.engine.model.hub_files import endpoint, set_endpoint, token

__all__ = ["endpoint", "set_endpoint", "token"]
