"""The engine core's wire format: typed messages encoded as msgpack arrays.

Token ids travel as integer arrays and structs as arrays of their fields (no field names, no
pickling), so one step's outputs for 32 decoding requests take well under a kilobyte.
`SCHEMA_VERSION` names the layout: the core announces it in `Ready`, and a client refuses a
core that speaks another, instead of misreading its messages.

Client -> core: `AddRequests`, `AbortRequests`, `Shutdown`.
Core -> client: `Ready` once, then `Outputs` per step, or `Failed` when the core cannot go on.
"""

from __future__ import annotations

import msgspec

from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest

# Bump whenever a message or a struct it carries changes its fields or their order.
SCHEMA_VERSION = 1


class AddRequests(msgspec.Struct, tag=True, array_like=True):
    requests: list[EngineCoreRequest]


class AbortRequests(msgspec.Struct, tag=True, array_like=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


class Ready(msgspec.Struct, tag=True, array_like=True):
    schema_version: int
    info: EngineCoreInfo


class Outputs(msgspec.Struct, tag=True, array_like=True):
    outputs: EngineCoreOutputs


class Failed(msgspec.Struct, tag=True, array_like=True):
    message: str


ClientMessage = AddRequests | AbortRequests | Shutdown
CoreMessage = Ready | Outputs | Failed


class WireError(RuntimeError):
    """A peer sent bytes that are not a message of this schema."""


class Codec:
    """Encodes what one side sends and decodes what it receives (not thread-safe: one per thread)."""

    def __init__(self, receives: type):
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(receives)

    def encode(self, message: msgspec.Struct) -> bytes:
        return self._encoder.encode(message)

    def decode(self, data: bytes):
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise WireError(
                f"undecodable engine message ({exc}); are both sides the same pagedllm version "
                f"(wire schema {SCHEMA_VERSION})?"
            ) from exc


def client_codec() -> Codec:
    """For the front end's side: sends client messages, receives core messages."""
    return Codec(CoreMessage)


def core_codec() -> Codec:
    """For the core's side: sends core messages, receives client messages."""
    return Codec(ClientMessage)
