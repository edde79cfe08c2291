"""`harness devices`: the attached devices (the host always), their state and what to do about one not ready."""
from __future__ import annotations

import json

from rich.console import Console

from harness.commands import EXIT_OK
from harness.commands.common_args import add_device_ctx, add_format, device_context
from harness.devices.base import DeviceError, discover_all
from harness.report.fit import fit_table
from harness.session import InputError


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("devices", help=help,
                       description="List attached devices (the host always) with their state and what to do "
                                   "when a device is not ready.")
    add_format(p, json_alias=True)
    p.add_argument("--aihub", action="store_true", help="list only Qualcomm AI Hub's devices (name, OS, chipset, "
                   "attributes): `qai-hub configure` or $QAIHUB_API_TOKEN first; see README 'Real phones through "
                   "Qualcomm AI Hub'")
    add_device_ctx(p)
    p.set_defaults(func=cmd_devices)


def cmd_devices(args) -> int:
    try:
        infos = discover_all(device_context(args), kinds=["aihub"] if args.aihub else None)
    except DeviceError as exc:
        raise InputError(str(exc)) from None
    if args.aihub and args.format != "json":
        return _print_aihub_devices(infos)
    if args.format == "json":
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return EXIT_OK
    console = Console()  # a terminal's width; piped: 80 columns (or $COLUMNS)
    table, notes = devices_table(infos, console)
    console.print(table)
    for line in notes:
        console.print(line, markup=False, highlight=False)
    return EXIT_OK


_DEVICE_DROP_ORDER = ("RAM", "OS", "SoC", "GPU", "model")  # from a devices table too wide for the console


def _print_aihub_devices(infos) -> int:
    """`harness devices --aihub`: the Hub's devices (id, OS, chipset, attributes) fitted to the console like
    `harness devices` (the id is never cut; attributes go first when it is narrow), notes under the table."""
    console = Console()
    rows = [[i.id, i.os_version, i.soc, ", ".join(a for a in i.extra.get("attributes", [])
                                                    if not a.startswith(("chipset:", "os:")))]
            for i in infos if not i.note]
    table, dropped = fit_table(console, "Qualcomm AI Hub devices (use as --device 'aihub:NAME')",
                               ["id", "OS", "chipset", "attributes"], rows, ("attributes", "OS"),
                               left=("OS", "chipset", "attributes"))
    console.print(table)
    if dropped:
        console.print(f"not shown at this width: {', '.join(dropped)} (a wider terminal, or --format json, "
                      "shows them)", markup=False, highlight=False)
    for line in _stand_in_lines(infos):
        console.print(line, markup=False, highlight=False)
    for i in (i for i in infos if i.note):
        console.print(f"note: {i.hint or i.state}", markup=False, highlight=False)
    return EXIT_OK


def _stand_in_lines(infos) -> list[str]:
    """Devices that are not what they say (fake phones, an API stand-in): one line each under a device table."""
    return [f"stand-in: {i.id}: {', '.join(i.stand_in)} (not a real device's figures)"
            for i in infos if not i.note and i.stand_in]


def devices_table(infos, console):
    """`harness devices` as a table that fits the console without cutting a device id or a state (the id is
    what --device takes): the id never wraps, nor the state (one word); the other columns wrap between words,
    and where that is not enough the least needed go (_DEVICE_DROP_ORDER; named under the table). What to do
    about a device that is not ready is a numbered note under the table (the row's `note` column gives its
    number), and an unreachable adb server or usbmuxd (not a device) a `note:` line.
    Returns (table, the lines to print under it)."""
    devices = [i for i in infos if not i.note]
    hints = [i for i in devices if i.hint]
    heads = ["id", "state"] + (["note"] if hints else []) + ["model", "SoC", "GPU", "OS", "RAM"]
    number = {id(i): n for n, i in enumerate(hints, 1)}
    rows = []
    for i in devices:
        ram = f"{i.ram_bytes / 2**30:.1f} GiB" if i.ram_bytes else ""
        note = [str(number.get(id(i), ""))] if hints else []
        rows.append([i.id, i.state, *note, i.model, i.soc, i.gpu, i.os_version, ram])
    table, dropped = fit_table(console, "Devices", heads, rows, _DEVICE_DROP_ORDER,
                               left=("state", "model", "SoC", "GPU", "OS", "RAM"))
    lines = [f"not shown at this width: {', '.join(dropped)} (a wider terminal, or --format json, shows them)"] \
        if dropped else []
    lines += [f"{n}. {i.id} ({i.state}): {i.hint}" for n, i in enumerate(hints, 1)]
    lines += _stand_in_lines(infos)
    lines += [f"note: {i.hint or i.name + ': ' + i.state}" for i in infos if i.note]
    return table, lines

