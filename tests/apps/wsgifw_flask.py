"""An ordinary Flask application, written as its users write them, for test_wsgi_frameworks.py.

Nothing here knows about rsasgi: the server must recognise `app` as WSGI by itself.
"""

import hashlib
import os
import tempfile
import time

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    request,
    send_file,
    session,
    stream_with_context,
    url_for,
)

STREAM_CHUNKS = 8
STREAM_CHUNK = b"0123456789abcdef" * 64

app = Flask(__name__)
app.secret_key = "wsgifw test secret"


@app.get("/")
def index():
    return "Hello from Flask"


@app.get("/items/<int:item_id>")
def items(item_id):
    return jsonify(
        item_id=item_id,
        q=request.args.getlist("q"),
        user_agent=request.headers.get("User-Agent"),
        script_root=request.script_root,
        path=request.path,
        url=url_for("items", item_id=item_id),
    )


@app.get("/greet/<name>")
def greet(name):
    return f"Hello, {name}!"


@app.post("/echo")
def echo():
    payload = request.get_json()
    return jsonify(received=payload), 201


@app.post("/digest")
def digest():
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.post("/upload")
def upload():
    uploaded = request.files["file"]
    sha = hashlib.sha256()
    size = 0
    while chunk := uploaded.stream.read(64 * 1024):
        sha.update(chunk)
        size += len(chunk)
    return jsonify(
        name=uploaded.filename,
        content_type=uploaded.content_type,
        size=size,
        sha256=sha.hexdigest(),
        note=request.form.get("note"),
    )


@app.get("/stream")
def stream():
    def generate():
        # request is only reachable inside the generator thanks to stream_with_context.
        count = int(request.args.get("count", STREAM_CHUNKS))
        for number in range(count):
            yield b"%d:" % number + STREAM_CHUNK + b"\n"
            time.sleep(0.02)

    return Response(stream_with_context(generate()), mimetype="application/octet-stream")


def download_content(size: int) -> bytes:
    """What /download/<size> serves; test_wsgi_frameworks.py computes the same bytes."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@app.get("/download/<int:size>")
def download(size):
    # send_file hands an open file to wsgi.file_wrapper; conditional=True answers Range and
    # If-None-Match requests.
    # The test fixture points WSGIFW_DOWNLOAD_DIR at its own temporary directory, which
    # pytest cleans up; files left in the system's would pile up run after run.
    folder = os.environ.get("WSGIFW_DOWNLOAD_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"wsgifw-download-{os.getpid()}-{size}.bin")
    if not os.path.exists(path):
        with open(path + ".part", "wb") as file:
            file.write(download_content(size))
        os.replace(path + ".part", path)
    return send_file(path, mimetype="application/octet-stream", conditional=True)


@app.get("/login")
def login():
    session["user"] = request.args["user"]
    return redirect(url_for("whoami"))


@app.get("/whoami")
def whoami():
    return jsonify(user=session.get("user"))


@app.get("/teapot")
def teapot():
    abort(418)


@app.get("/log-exception")
def log_exception():
    print("wsgifw_flask printed", file=request.environ["wsgi.errors"])
    try:
        raise ZeroDivisionError("wsgifw_flask caught")
    except ZeroDivisionError:
        app.logger.exception("wsgifw_flask logged")
    return "logged"


@app.get("/boom")
def boom():
    raise RuntimeError("wsgifw_flask boom")


# A second app that lets exceptions out to the server, as Flask does with PROPAGATE_EXCEPTIONS
# (or in testing mode): the server itself must answer 500 and log the traceback.
strict_app = Flask(__name__ + ".strict")
strict_app.config["PROPAGATE_EXCEPTIONS"] = True


@strict_app.get("/")
def strict_index():
    return "strict"


@strict_app.get("/boom")
def strict_boom():
    raise ValueError("wsgifw_flask strict boom")
