"""The engine core's wire format: typed messages encoded as msgpack arrays.

Token ids travel as integer arrays and structs as arrays of their fields (no field names, no
pickling, no text): a decoding request's output in a step is its id plus about twenty bytes.
`SCHEMA_VERSION` names the layout: the core announces it in `Ready`, and a client refuses a
core that speaks another, instead of misreading its messages.

Client -> core: `AddRequests`, `AbortRequests`, `RequestSnapshot`, `Shutdown`.
Core -> client: `Ready` once, then `Outputs` per step, or `Failed` when the core cannot go on.
"""

from __future__ import annotations

import msgspec

from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest

# Bump whenever a message or a struct it carries changes its fields or their order.
SCHEMA_VERSION = 5


class AddRequests(msgspec.Struct, tag=True, array_like=True):
    requests: list[EngineCoreRequest]


class AbortRequests(msgspec.Struct, tag=True, array_like=True):
    request_ids: list[str]


class RequestSnapshot(msgspec.Struct, tag=True, array_like=True):
    """Ask for the core's `SchedulerSnapshot`: it comes in the next `Outputs` it sends."""


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


class Ready(msgspec.Struct, tag=True, array_like=True):
    schema_version: int
    info: EngineCoreInfo


class Outputs(msgspec.Struct, tag=True, array_like=True):
    outputs: EngineCoreOutputs


class Failed(msgspec.Struct, tag=True, array_like=True):
    message: str
    # The core refused its configuration (a ValueError at start-up: bad option, unknown model):
    # the user's mistake to correct, reported as such, not a crash.
    invalid_config: bool = False


ClientMessage = AddRequests | AbortRequests | RequestSnapshot | Shutdown
CoreMessage = Ready | Outputs | Failed


class EngineConfigError(ValueError):
    """The engine core refused its configuration at start-up; the message says what to change."""


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


def expect_ready(message: CoreMessage) -> EngineCoreInfo:
    """The core's first message, checked: its info, or an error saying why not
    (`EngineConfigError` when the core refused its configuration, else RuntimeError)."""
    if isinstance(message, Failed) and message.invalid_config:
        raise EngineConfigError(message.message)
    if isinstance(message, Failed):
        raise RuntimeError(f"the engine core failed to start: {message.message}")
    if not isinstance(message, Ready):
        raise RuntimeError(f"the engine core sent {type(message).__name__} before Ready")
    if message.schema_version != SCHEMA_VERSION:
        raise RuntimeError(
            f"the engine core speaks wire schema {message.schema_version}, this front end "
            f"{SCHEMA_VERSION}; run the same pagedllm version on both sides"
        )
    return message.info


def client_codec() -> Codec:
    """For the front end's side: sends client messages, receives core messages."""
    return Codec(CoreMessage)


def core_codec() -> Codec:
    """For the core's side: sends core messages, receives client messages."""
    return Codec(ClientMessage)
