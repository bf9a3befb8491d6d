"""In the browser, a model's GGUF header is read before its download (MLCEngine checks the GPU memory it needs from
it): HTTP range requests of gguf.HEADER_STEP bytes from the page's server, nothing stored, the same header the desktop
parses from the file; once the file is stored, from storage without a request."""

from __future__ import annotations

from webllm_py.model.gguf import HEADER_STEP, GGUFFile

SETUP = """
from webllm_testkit import demo_app_config
from webllm_py.host import browser_cache
record, config = await demo_app_config("cache")
"""
READ = """
g = await browser_cache.read_header(record, config)
{"arch": g.get_str("general.architecture"), "tensors": len(g.tensors), "data_offset": g.data_offset,
 "cached": await browser_cache.has_model_in_cache(record, config)}
"""


def test_header_before_download_by_range_requests(open_worker, server, dist):
    w = open_worker()
    w.run(SETUP + "await browser_cache.delete_model_in_cache(record, config)")
    before = server.count(".gguf")
    got = w.run(SETUP + READ, timeout_s=120)
    with GGUFFile.open(dist / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf") as g:
        want = {"arch": "llama", "tensors": len(g.tensors), "data_offset": g.data_offset, "cached": False}
    assert got == want
    requests = server.count(".gguf") - before
    assert (
        1 <= requests <= -(-want["data_offset"] // HEADER_STEP) + 1
    )  # steps up to the header's end, no more

    # Stored: read from storage, no request.
    w.run(SETUP + "await browser_cache.download_model(record, config, lambda p, t: None)", timeout_s=300)
    stored = server.count(".gguf")
    assert w.run(SETUP + READ, timeout_s=120) == {**want, "cached": True}
    assert server.count(".gguf") == stored
    w.run(SETUP + "await browser_cache.delete_model_in_cache(record, config)")
