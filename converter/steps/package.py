"""Write the one signed bundle file: the artifact plus its manifest, signed with the fleet key."""

from __future__ import annotations

from datetime import datetime, timezone

from edgefleet import __version__
from edgefleet.contract.bundle import write_bundle
from edgefleet.contract.manifest import BundleManifest
from edgefleet.converter.context import ConversionContext


def bundle_file_name(name: str, version: str, profile: str) -> str:
    return f"{name}-{version}-{profile}.efb"


class Package:
    name = "package signed bundle"

    def run(self, ctx: ConversionContext) -> None:
        request, profile = ctx.request, ctx.profile
        artifact = ctx.need(ctx.artifact_path, "the artifact")
        member = f"model{artifact.suffix}"
        manifest = BundleManifest(
            name=request.name,
            version=request.version,
            profile=profile.name,
            format=profile.artifact.format,
            precision=profile.artifact.precision,
            artifact=member,
            inputs=ctx.inputs,
            outputs=ctx.outputs,
            files=[],
            metrics=ctx.need(ctx.metrics, "the metrics"),
            converter_version=__version__,
            created_at=datetime.now(timezone.utc),
        )
        out = request.out / bundle_file_name(request.name, request.version, profile.name)
        write_bundle(out, manifest, {member: artifact}, ctx.need(ctx.private_key, "the signing key"))
        ctx.bundle_path = out
