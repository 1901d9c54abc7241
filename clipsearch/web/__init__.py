"""The web app and HTTP API (``clipsearch serve``); needs the ``web`` extra:
``pip install 'clipsearch[web]'`` (FastAPI, uvicorn, python-multipart)."""
