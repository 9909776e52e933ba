"""Someone who acts at the target when a case needs it: the operator.

Some behaviour can only be judged when the target itself acts: a platform that opens a live view,
turns a camera or plays a recording back because a user asked it to, a device that unregisters
or reports an alarm because someone triggered one. The national test centre's self-test tool
has the tester do these by hand while it watches the wire; so does this suite. A case asks for
an :class:`Action` (:meth:`Context.ask <conformance.suite.context.Context.ask>`), then waits
``operator_timeout`` seconds for its effect on the wire and judges it.

Who acts (``Options.operator``):

* ``none`` (the default): nobody. The cases that need an operator are skipped, saying so.
* ``prompt``: a person. The instruction is printed (to the terminal the suite runs in), and the
  case waits for the effect; no key press is needed.
* ``hook``: a program. ``Options.operator_hook`` is run through the shell once per action with
  the action as JSON on its standard input and in ``GB28181_ACTION``, plus ``GB28181_ACTION_NAME``
  and ``GB28181_ACTION_TARGET``; it must do the action (e.g. call the platform's HTTP API) and
  exit 0 within ``operator_timeout`` seconds (what it leaves running in the background is
  stopped with it when it overruns). A failing hook makes the case an error, not a verdict on
  the target; its output (the last 2000 characters) goes into the error.

Programs embedding the suite pass any ``async`` callable taking an :class:`Action` to
:func:`~conformance.suite.runner.run_suite` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from conformance.suite.options import Options

OPERATORS = ("none", "prompt", "hook")
HOOK_OUTPUT_LIMIT = 2000  # characters of a failing hook's output kept in the error

# What a case may ask for. Platform targets (the suite is devices below): the platform does
# something to a channel or device of the suite's. Device targets (the suite is the platform):
# the device does something on its own.
ACTIONS: Mapping[str, str] = {
    "live-start": "open the live view of channel {target}{transport}",
    "live-stop": "close the live view of channel {target}",
    "ptz": "PTZ on channel {target}: {direction}",
    "record-start": "start recording on channel {target} (manual record)",
    "record-stop": "stop recording on channel {target}",
    "record-search": "search the recordings of channel {target} for {start} to {end}",
    "playback-start": "play back channel {target} from {start} to {end}",
    "playback-pause": "pause the playback of channel {target}",
    "playback-resume": "resume the playback of channel {target}",
    "playback-scale": "play channel {target} back at speed {scale}",
    "playback-stop": "stop the playback of channel {target}",
    "download": "download the recording of channel {target} from {start} to {end}",
    "device-info": "query the device information of device {target}",
    "device-status": "query the status of device {target}",
    "guard-set": "arm device {target} (guard)",
    "guard-reset": "disarm device {target}",
    "alarm-reset": "reset the alarm of device {target}",
    "teleboot": "reboot device {target} remotely",
    "unregister": "make device {target} unregister (e.g. turn GB/T 28181 access off)",
    "register": "make device {target} register again (turn GB/T 28181 access back on)",
    "alarm": "trigger an alarm at device {target} (e.g. an alarm input or motion detection)",
}


# How a person sets the stream transport in a platform's client (our names are the platform's
# side of the media, as in a=setup).
TRANSPORT_TEXT: Mapping[str, str] = {
    "udp": ", media over UDP",
    "tcp-passive": ", media over TCP with the platform listening (TCP passive)",
    "tcp-active": ", media over TCP with the platform connecting (TCP active)",
}


class _Blank(dict[str, Any]):
    """Format values where a parameter the instruction names was not given: left out."""

    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the target is asked to do. ``name`` is a key of :data:`ACTIONS`, ``target``
    the ID it concerns (as the target knows it); ``params`` say more (``direction``,
    ``start``/``end`` as MANSCDP times, ``scale``, ``device``, ``transport`` for a live view:
    ``udp``, ``tcp-passive`` or ``tcp-active``, the platform's side of the media)."""

    name: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    case: str = ""  # the asking case's ID

    def __post_init__(self) -> None:
        if self.name not in ACTIONS:
            raise ValueError(f"unknown operator action {self.name!r}")

    @property
    def text(self) -> str:
        """The instruction for a person."""
        values = _Blank(self.params)
        values["target"] = self.target
        if "transport" in values:
            transport = str(values["transport"])
            values["transport"] = TRANSPORT_TEXT.get(transport, f", media {transport}")
        return ACTIONS[self.name].format_map(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.name,
            "target": self.target,
            "params": dict(self.params),
            "case": self.case,
            "text": self.text,
        }


Operator = Callable[[Action], Awaitable[None]]


class OperatorError(RuntimeError):
    """The operator could not do the action (a hook that failed): the suite cannot judge."""


class PromptOperator:
    """A person at the suite's terminal: each action is printed with how long the suite waits
    for its effect; nothing is read back."""

    def __init__(self, out: TextIO | None = None, wait: float | None = None) -> None:
        self.out = out
        self.wait = wait

    async def __call__(self, action: Action) -> None:
        out = self.out or sys.stderr
        within = f" (the suite waits {self.wait:g} s for it)" if self.wait else ""
        print(f"\n>>> {action.case}: please {action.text} now{within}", file=out, flush=True)


class HookOperator:
    """A program run through the shell for each action (see the module docstring)."""

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout

    async def __call__(self, action: Action) -> None:
        payload = json.dumps(action.to_json(), ensure_ascii=False)
        env = dict(os.environ)
        env.update(
            GB28181_ACTION=payload,
            GB28181_ACTION_NAME=action.name,
            GB28181_ACTION_TARGET=action.target,
        )
        # Standard input and output are files, not pipes: a hook that never reads its input,
        # or leaves a background child behind (a player it started), cannot block on them.
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out:
            stdin.write(payload.encode())
            stdin.seek(0)
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, stopped whole on a timeout
            )
            try:
                async with asyncio.timeout(self.timeout):
                    await proc.wait()
            except TimeoutError:
                raise OperatorError(
                    f"the operator hook did not finish {action.name} in {self.timeout:g} s"
                ) from None
            finally:
                if proc.returncode is None:  # timed out, or the run was cancelled
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await asyncio.shield(proc.wait())
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            text = output.decode("utf-8", "replace").strip()[-HOOK_OUTPUT_LIMIT:]
            raise OperatorError(
                f"the operator hook failed on {action.name} (exit status {proc.returncode})"
                + (f": {text}" if text else "")
            )


def make_operator(options: Options, out: TextIO | None = None) -> Operator | None:
    """The operator ``options`` name (None for ``none``)."""
    if options.operator == "prompt":
        return PromptOperator(out, options.operator_timeout)
    if options.operator == "hook":
        return HookOperator(options.operator_hook, options.operator_timeout)
    return None


NO_OPERATOR = (
    "needs someone to act at the target (run with --operator prompt, or --operator-hook CMD)"
)

__all__ = [
    "ACTIONS",
    "NO_OPERATOR",
    "OPERATORS",
    "Action",
    "HookOperator",
    "Operator",
    "OperatorError",
    "PromptOperator",
    "make_operator",
]
