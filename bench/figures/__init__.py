"""The measured figures: each module's run(context) prints its figure and writes bench/results/<name>.json."""

from bench.results import Context


async def run(figure: str, context: Context) -> None:
    if figure == "recompute":
        from bench.figures import recompute

        await recompute.run(context)
    else:
        from bench.figures import live

        await live.run(figure, context)
