"""The web page served at `/`: Jinja2 templates, one stylesheet, a little JavaScript, and the
presentation helpers that turn service data into what the templates draw (`views`)."""
