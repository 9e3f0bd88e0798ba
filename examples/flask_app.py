"""A Flask application served unchanged by rsasgi over WSGI: JSON, streaming and a form upload.

Run it from the repository root (`pip install flask` first); rsasgi sees a WSGI app and
serves it on its thread pool:

    rsasgi --app-dir examples flask_app:app

Then try:

    curl http://127.0.0.1:8000/
    curl -N http://127.0.0.1:8000/stream?count=5
    curl -F upload=@README.md http://127.0.0.1:8000/upload
"""

import hashlib
import time

from flask import Flask, Response, jsonify, request, stream_with_context

UPLOAD_FORM = """<!doctype html>
<title>Upload</title>
<form method="post" action="/upload" enctype="multipart/form-data">
  <input type="file" name="upload"> <button>Send</button>
</form>
"""

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(
        hello="world",
        server=request.environ.get("SERVER_SOFTWARE"),
        multithread=request.environ["wsgi.multithread"],
    )


@app.get("/stream")
def stream():
    """Sends `count` lines, one every `delay` seconds, as a chunked response."""

    def lines():
        count = int(request.args.get("count", "10"))
        delay = float(request.args.get("delay", "0.2"))
        for number in range(count):
            yield f"line {number}\n"
            time.sleep(delay)  # blocks one pool thread, never the server

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/upload")
def upload_form():
    return UPLOAD_FORM


@app.post("/upload")
def upload():
    """Receives a multipart form with a file field named `upload`."""
    uploaded = request.files["upload"]
    digest = hashlib.sha256()
    size = 0
    while chunk := uploaded.stream.read(64 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return jsonify(filename=uploaded.filename, size=size, sha256=digest.hexdigest())
