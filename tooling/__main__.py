from tooling.cli import app

app(prog_name="lakeloop")
