"""A loopback EC2 endpoint that answers `DescribeImages` only, for SkyPilot's offline AWS dry run.

SkyPilot's dry run on AWS writes the cluster config, which asks EC2 for the machine image's root
device (`DescribeImages`, `sky/clouds/aws.py: get_image_root_device_name`). Pointed at this
server (`AWS_ENDPOINT_URL_EC2`), botocore gets a well-formed answer: every requested image id
exists, with root device `/dev/sda1` on an 8 GiB volume. Any other action is refused with EC2's
`UnsupportedOperation` error, so nothing else can pass unnoticed. `requests` records the actions.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
ROOT_DEVICE = "/dev/sda1"
IMAGE_GB = 8


def describe_images_xml(image_ids: list[str]) -> str:
    """EC2's `DescribeImages` response body for `image_ids`."""
    items = "".join(
        f"<item><imageId>{escape(i)}</imageId><imageState>available</imageState>"
        f"<rootDeviceType>ebs</rootDeviceType><rootDeviceName>{ROOT_DEVICE}</rootDeviceName>"
        f"<blockDeviceMapping><item><deviceName>{ROOT_DEVICE}</deviceName><ebs><volumeSize>{IMAGE_GB}"
        "</volumeSize></ebs></item></blockDeviceMapping></item>" for i in image_ids)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeImagesResponse xmlns="{NAMESPACE}">'
            f"<requestId>test-ec2</requestId><imagesSet>{items}</imagesSet></DescribeImagesResponse>")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        action = (form.get("Action") or [""])[0]
        self.server.requests.append(action)
        if action == "DescribeImages":
            ids = [v[0] for k, v in sorted(form.items()) if k.startswith("ImageId.")]
            status, body = 200, describe_images_xml(ids)
        else:
            status = 400
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnsupportedOperation'
                    f"</Code><Message>the test EC2 endpoint answers DescribeImages only, not {escape(action)}"
                    "</Message></Error></Errors><RequestID>test-ec2</RequestID></Response>")
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (quiet, as botocore retries)
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]


class Ec2Server:
    """The endpoint on a free loopback port, served from a thread: `with Ec2Server() as ec2: ec2.endpoint_url`."""

    def __init__(self) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.requests = []
        self.endpoint_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-ec2", daemon=True)

    @property
    def requests(self) -> list[str]:
        """The actions asked for so far, in order."""
        return list(self.httpd.requests)

    def __enter__(self) -> Ec2Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
