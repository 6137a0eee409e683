"""Write ``.env.example`` from the settings class, so it always lists every setting."""

from __future__ import annotations

from retrieval.config import Settings

HEADER = """\
# Every colqwen-search setting, with its default. Copy to .env and uncomment what you change:
#   cp .env.example .env
# The same variables configure the CLI, the API and the workers (docker-compose passes .env on).
"""


def env_example() -> str:
    lines = [HEADER]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            ""
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        lines.append(f"# {field.description}")
        lines.append(f"# COLQWEN_{name.upper()}={shown}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(env_example(), end="")
