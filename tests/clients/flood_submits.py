"""An authorised but hostile client: floods the endpoint with well-formed
submits that cannot be taken, as fast as the endpoint reads them, and never
reads a reply. Usage: flood_submits.py ADDRESS SECONDS [junk]
In turn: a submit naming one invocation id twice (of a function it registered
first), and one naming a function the endpoint never got; with ``junk``,
frames that are no message at all. Prints how many it sent."""

import sys
import time
import uuid

import zmq

from faas import protocol

address, seconds, junk = sys.argv[1], float(sys.argv[2]), sys.argv[3:] == ["junk"]
sock = zmq.Context().socket(zmq.DEALER)
sock.linger = 0
sock.connect(address)
fid = uuid.uuid4().hex
sock.send_multipart(protocol.encode(protocol.Submit(  # a function the endpoint then knows, with one invocation
    group=uuid.uuid4().hex, functions=[protocol.FunctionInfo(id=fid, name="f", context_key="k", context="c")],
    invocations=[protocol.InvocationRef(id=uuid.uuid4().hex, function=fid)]), [b"not a pickle", b"x"]))
until, sent = time.monotonic() + seconds, 0
while time.monotonic() < until:
    if junk:
        sock.send_multipart([b"junk", b"%d" % sent])
    elif sent % 2 == 0:
        inv = protocol.InvocationRef(id=uuid.uuid4().hex, function=fid)
        sock.send_multipart(protocol.encode(protocol.Submit.model_construct(  # unchecked: it names an id twice
            group=uuid.uuid4().hex, functions=[], invocations=[inv, inv]), [b"x", b"x"]))
    else:
        inv = protocol.InvocationRef(id=uuid.uuid4().hex, function=uuid.uuid4().hex)
        sock.send_multipart(protocol.encode(protocol.Submit(group=uuid.uuid4().hex, functions=[], invocations=[inv]),
                                            [b"x"]))
    sent += 1
print(sent)
