"""skyfed: federated ingestion and processing across regional Google Cloud projects."""

__version__ = "0.1.0"


def connect(spec_or_path=None, *, materializations=None, **options):  # type: ignore[no-untyped-def]
    """A federated query connection: `skyfed.connect(spec).query(sql)`; see skyfed.query.connect.

    A path (or None: $SKYFED_SPEC, else ./skyfed.yaml) is loaded with the running local
    federation's addresses in the environment, as the CLI does; variables you exported win.
    Fresh materialized views of the models beside the spec answer first
    (`materializations`: a models folder, or False for none; see skyfed.pipelines.serve).
    """
    from skyfed.pipelines.serve import connect as _connect
    from skyfed.spec import PlatformSpec

    if not isinstance(spec_or_path, PlatformSpec):
        from skyfed.localenv import apply_service_env

        apply_service_env(override=False)
    return _connect(spec_or_path, materializations=materializations, **options)
