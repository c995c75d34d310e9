"""tritonclient's HTTP client, unmodified, against a dml node's KServe v2 endpoint.

Usage: triton_check.py HOST:PORT TOKEN MODEL IMAGE...
Prints one JSON line per image: {"file": NAME, "top5": ["prob:index:label", ...]}.
"""
import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    url, token, model, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    client = httpclient.InferenceServerClient(url=url)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.is_server_live(), "server not live"
    assert client.is_model_ready(model, headers=headers), "model not ready"
    meta = client.get_model_metadata(model, headers=headers)
    assert meta["name"] == model, meta
    try:
        client.get_model_metadata(model)
        raise SystemExit("metadata without a token was served")
    except InferenceServerException as e:
        assert "Bearer" in str(e), e
    for path in paths:
        with open(path, "rb") as f:
            data = np.array([f.read()], dtype=np.object_)
        image = httpclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(data)  # binary tensor extension, as by default
        out = httpclient.InferRequestedOutput("logits", class_count=5)
        res = client.infer(model, [image], outputs=[out], headers=headers)
        top = [s.decode() if isinstance(s, bytes) else str(s) for s in res.as_numpy("logits").reshape(-1)]
        print(json.dumps({"file": os.path.basename(path), "top5": top}), flush=True)


if __name__ == "__main__":
    main()
