"""`segmenter models`: the registry on disk, and what the workers report of it."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from stream.cli.common import settings_or_exit


def _user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """A registry that says no (no such version, nothing to roll back to) is a
    user error: one line and exit code 2, not an internal one."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from model.registry import ModelError
        from stream.cli.args import UserError

        try:
            command(*args, **kwargs)
        except ModelError as exc:
            raise UserError(f"{exc} (see `segmenter models list`)") from None

    return run


models_app = typer.Typer(
    help="The model registry: list, show, promote, rollback.", no_args_is_help=True
)


@models_app.command("list")
def models_list() -> None:
    """Every version with its high_value F1 (the gate metric); * marks the current one."""
    from model.registry import current_version, list_versions, read_manifest

    settings = settings_or_exit()
    current = current_version(settings.model_dir)
    for version in list_versions(settings.model_dir):
        manifest = read_manifest(settings.model_dir / version)
        metrics = manifest.get("metrics", {})
        f1 = metrics.get("high_value_f1")
        gate = manifest.get("gate", {}).get("outcome", "")
        kind = manifest.get("training", {}).get("source_kind", "?")
        mark = "*" if version == current else " "
        f1_text = f"{f1:.3f}" if isinstance(f1, float) else "-"
        typer.echo(
            f"{mark} {version:<28} high_value-F1 {f1_text}  {kind:<9} "
            f"{manifest.get('created_at', '')}  {gate}"
        )


@models_app.command("show")
@_user_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version (default: current)")] = "",
) -> None:
    """A version's manifest (features, schema hash, classes, window, metrics, gate) and drift.

    ``drift.reference`` summarises the training distribution the manifest stores;
    ``drift.live`` is the workers' latest PSI per feature for this version, read
    from Redis, or says why it is not available.
    """
    import time

    from model.drift import summary
    from model.registry import current_version, read_manifest
    from stream.worker.drift import merge_reports, report_max_age_s
    from stream.worker.state.store import StateStore

    settings = settings_or_exit()
    version = version or (current_version(settings.model_dir) or "")
    if not version:
        from stream.cli.args import UserError

        raise UserError(
            f"no model is current in {settings.model_dir} yet: train one, or start a worker "
            "(it seeds the bundled bootstrap model)"
        )
    manifest = read_manifest(settings.model_dir / version)
    manifest.pop("normalisation", None)
    ref = manifest.pop("drift_reference", None)
    live: dict[str, Any]
    max_age = report_max_age_s(settings.housekeeping_interval_s)
    if ref is None:
        live = {
            "available": False,
            "reason": "the manifest has no drift reference (trained before drift monitoring); "
            "a model trained by this code has one",
        }
    else:

        async def reports() -> list[dict[str, Any]]:
            store = StateStore.from_settings(settings)
            try:
                return await store.drift_reports()
            finally:
                await store.close()

        try:
            merged = merge_reports(
                ref, asyncio.run(reports()), version, now=time.time(), max_age_s=max_age
            )
        except Exception as exc:  # Redis unreachable, or its reports unreadable
            live = {"available": False, "reason": f"Redis: {type(exc).__name__}: {exc}"}
        else:
            live = (
                {"available": True, **merged}
                if merged is not None
                else {
                    "available": False,
                    "reason": f"no worker has reported drift for {version} in the last "
                    f"{max_age} s (is it serving, with SEGMENTER_DRIFT_WINDOW_ROWS > 0?)",
                }
            )
    manifest["drift"] = {"reference": summary(ref) if ref is not None else None, "live": live}
    sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")


@models_app.command("promote")
@_user_errors
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to make current")],
    reason: Annotated[str, typer.Option(help="Recorded in the promotion history")] = "manual",
) -> None:
    """Make a version current (workers switch without a restart) and announce it."""
    from stream.announce import promote_and_announce

    settings = settings_or_exit()
    entry = promote_and_announce(settings, version, reason)
    typer.echo(f"current: {entry['version']} (was {entry['previous']})")


@models_app.command("rollback")
@_user_errors
def models_rollback() -> None:
    """Go back to the version that was current before this one, and announce it."""
    from stream.announce import rollback_and_announce

    settings = settings_or_exit()
    entry = rollback_and_announce(settings)
    typer.echo(f"current: {entry['version']} (rolled back from {entry['previous']})")


audiences_app = typer.Typer(help="Rule audiences (SEGMENTER_AUDIENCES_PATH).", no_args_is_help=True)


@audiences_app.command("check")
def audiences_check(
    file: Annotated[Path, typer.Argument(help="The audiences YAML file")],
) -> None:
    """Check an audiences file as a worker would at start: names, CEL syntax and types.

    The conditions are checked against the current model's segments (or the
    default ones when the registry has no model yet).
    """
    from model.registry import current_version, read_manifest
    from model.segments import DEFAULT_SEGMENTS
    from stream.cli.args import UserError
    from stream.worker.rules.audiences import AudiencesError, load

    settings = settings_or_exit()
    version = current_version(settings.model_dir)
    classes = (
        tuple(read_manifest(settings.model_dir / version)["classes"])
        if version
        else DEFAULT_SEGMENTS
    )
    try:
        audiences = load(file, classes)
    except AudiencesError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"{file}: {len(audiences.audiences)} audiences, all valid")
    for a in audiences.audiences:
        how = "NumPy, per batch" if a.vectorised else "CEL runtime, per user"
        typer.echo(f"  {a.name:<24} {a.when}  [{how}]")
