"""The CLI's option machinery: defaults read from the stages' config dataclasses, one-line errors,
fsspec storage options, help filled in from the registries when it is printed, byte sizes, and the
losses' own options generated from their declarations.

    >>> @cli.command()
    ... @click.option("--teacher", cls=RegistryHelp, help="Teacher spec: {model_specs}.")
    ... @storage_option
    ... @friendly_errors
    ... def dump(...): ...

Nothing here imports torch or zarr at import time: ``logitcache --help`` starts at once.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import click

from .errors import ConfigError, LogitCacheError


def defaults(config_class) -> dict:
    """Each option's default, read from the stage's dataclass: the one place defaults are set."""
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto (cuda when a GPU is visible, else cpu)."


def friendly_errors(command):
    """Turn logitcache errors into click errors (exit 1) and Ctrl-C into exit 130, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
        except LogitCacheError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: what was written is kept; rerun the same command to resume "
                       "(for train, add --resume)", err=True)
            sys.exit(130)

    return wrapper


def _storage_options(ctx, param, values) -> dict:
    """``--storage-option k=v`` (repeatable) -> fsspec options; ``a.b=v`` nests as {"a": {"b": v}}."""
    from .registry import parse_kwargs

    options: dict = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form key=value", ctx, param)
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parse_kwargs(f"v={raw}", "--storage-option")["v"] if raw else ""
    return options


class RegistryHelp(click.Option):
    """An option whose help lists what the registries hold: its ``{model_specs}``, ``{dataset_specs}``,
    ``{token_dataset_specs}``, ``{tokenizer_specs}`` (``sources/spec_help.py``) and ``{codecs}`` are
    filled in when the help is printed, so it names every registered spec, a plugin's too, and only
    a command's own help imports the registries (torch, zarr)."""

    def get_help_record(self, ctx):
        from string import Formatter

        self.template = getattr(self, "template", self.help)
        fields = {field for _, field, _, _ in Formatter().parse(self.template) if field}
        self.help = self.template.format(**{field: _registered(field) for field in fields})
        return super().get_help_record(ctx)


def _registered(field: str) -> str:
    if field == "codecs":
        from .store import list_codecs

        return ", ".join(list_codecs())
    from .sources import spec_help

    return getattr(spec_help, field)()


storage_option = click.option(
    "--storage-option", "storage_options", multiple=True, callback=_storage_options, metavar="KEY=VALUE",
    help="fsspec option for a remote store (repeatable), e.g. endpoint_url=http://127.0.0.1:9000; "
    "S3 credentials and endpoint also come from AWS_* environment variables.",
)


class ByteSize(click.ParamType):
    """Sizes such as 512MiB, 4GiB, 2GB or a plain number of bytes."""

    name = "size"
    UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):].strip()
        try:
            size = int(float(number) * self.UNITS[unit])
        except (ValueError, KeyError, OverflowError):
            self.fail(f"{value!r} is not a size like 512MiB, 4GiB or 1000000", param, ctx)
        if size < 0:
            self.fail(f"{value!r} is negative; give a size like 512MiB, 4GiB or 1000000", param, ctx)
        return size


class LossList(click.ParamType):
    """``NAME[=WEIGHT],...`` of registered losses (losses/), checked when given: one line naming the fix."""

    name = "losses"

    def convert(self, value, param, ctx):
        from .losses import loss_names, loss_spec

        if value not in loss_names() and not set(",=") & set(value):  # one unknown name: as it always said
            self.fail(f"{value!r} is not one of {', '.join(loss_names())}", param, ctx)
        try:
            loss_spec(value)
        except ConfigError as err:
            self.fail(str(err), param, ctx)
        return value


class LossOption(click.Option):
    """An option a loss declares (``--dkd-beta``), generated from the loss registry."""


def refresh_loss_options(command: click.Command) -> None:
    """(Re)generate ``command``'s loss options from the loss registry: one option per declared loss
    option (after --ce-weight), and the help of --loss and --temperature. Called for ``train`` below,
    and again by whoever registers a loss after this module was imported."""
    from .losses import LOSSES, declared_options, list_losses, loss_names, token_loss_names
    from .losses.declarations import option_flag

    params = [param for param in command.params if not isinstance(param, LossOption)]
    at = next(i for i, param in enumerate(params) if param.name == "ce_weight") + 1
    generated = [LossOption([option_flag(loss, option.name)], type=option.type, default=option.default,
                            show_default=True, help=option.help) for loss, option in declared_options()]
    if clash := {param.name for param in params} & {param.name for param in generated}:
        raise ValueError(f"loss option {sorted(clash)[0]} is already an option of {command.name}")
    command.params = params[:at] + generated + params[at:]
    by_name = {param.name: param for param in command.params}
    by_name["loss"].help = (
        "The total is ce_weight * CE plus each listed loss times its weight (--kd-weight where none is given), "
        f"e.g. kl or kl=1,dist=0.5. {'; '.join(f'{n}: {LOSSES.get(n).help}' for n in loss_names())}. Default "
        f"dist with a teacher, ce without. Token data: one of {' or '.join(token_loss_names())} (default kl with "
        "a teacher).")
    own = ", ".join(f"{name} {LOSSES.get(name).temperature:g}" for name in list_losses())
    by_name["temperature"].help = (f"Softmax temperature (default: the loss's own: {own}; a list whose losses "
                                   "differ needs one; token data 1, or the T a sample:K:T store was drawn at).")
