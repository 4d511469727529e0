"""Placeholder entry point; replaced by the full CLI."""


def main() -> None:
    raise SystemExit("wherewhat: CLI not built yet")
