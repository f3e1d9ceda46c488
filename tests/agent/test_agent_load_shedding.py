"""Issue 10 item 5, explicit load shedding: every request that reaches the broker gets a reply (a result,
an error, or "overloaded"), even when a burst exceeds the agent's own queue many times over while the
agent is stalled (SIGSTOP stands in for a slow device: swap, a model load, a busy CPU)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
from agent_helpers import DEVICE, Keys, agent_config, publish_bundle, started_agent

from edgefleet.contract import topics
from edgefleet.contract.messages import CONTENT_NPY
from edgefleet.contract.tensors import encode_npy
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.mqtt import publish_properties

# More than mosquitto's default per-client queue (1000) and than the 10000 the broker-config used to write.
BURST = 12_000


def test_a_burst_while_the_agent_is_stalled_gets_a_reply_for_every_request(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, bundles: dict[str, Path]
) -> None:
    config = agent_config(tmp_path, broker.url, keys, max_queued_requests=8, inference_workers=1)
    with started_agent(tmp_path, broker, config, profiles_dir) as agent:
        observer = agent.observer
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d1", version="1")
        observer.wait_active("1")
        request = encode_npy(np.zeros((1, 1, 8, 8), np.float32))
        assert agent.process.process is not None
        pid = agent.process.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            sent = [
                observer.client.publish(
                    topics.infer(DEVICE),
                    request,
                    qos=1,
                    properties=publish_properties(
                        CorrelationData=index.to_bytes(4, "big"),
                        ResponseTopic=observer.reply_topic,
                        ContentType=CONTENT_NPY,
                    ),
                )
                for index in range(BURST)
            ]
            for info in sent:
                info.wait_for_publish(60)  # the broker holds every request
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 180
        with observer.lock:
            while len(observer.replies) < BURST and time.monotonic() < deadline:
                observer.lock.wait(1)
            replies = dict(observer.replies)
    outcomes = Counter(
        reply.status if reply.status == "ok" else json.loads(reply.payload)["error"].split(" (")[0]
        for reply in replies.values()
    )
    assert len(replies) == BURST, f"{BURST - len(replies)} requests got no reply; {outcomes}"
    assert set(outcomes) == {"ok", "the agent is overloaded"}, outcomes
    assert "dropped" not in broker.log_path.read_text()
