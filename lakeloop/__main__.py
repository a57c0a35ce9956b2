from lakeloop.cli import app

app(prog_name="lakeloop")
