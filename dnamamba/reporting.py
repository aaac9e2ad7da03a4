"""Short human summaries printed at the end of a run (stderr, through rich)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def print_pretrain_summary(metrics: dict, run_dir: str) -> None:
    table = Table(title="validation", show_edge=False)
    for col in ("epoch", "step", "bits/base"):
        table.add_column(col, justify="right")
    for row in metrics.get("val_history", []):
        table.add_row(str(row["epoch"]), str(row["step"]), f"{row['val_bits_per_base']:.4f}")
    console.print(table)
    bpb = metrics.get("val_bits_per_base")
    console.print(f"pretrain: {metrics['global_step']} steps in {metrics['wall_time_s']:.0f} s, "
                  f"{metrics['parameters']:,} parameters, val bits/base "
                  f"{'n/a' if bpb is None else f'{bpb:.4f}'}")
    console.print(f"export:   {metrics['export_dir']}")
    console.print(f"metrics:  {run_dir}/metrics.json")
