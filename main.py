"""lit_janus command line: `python main.py fit|validate|predict --config ... [--config ...]`.

Configs stack left to right (model / data / trainer / stage overlays); see the README's configs/ section.
"""

from lit_janus.cli import main

if __name__ == "__main__":
    main()
