"""omicsfs: mount genomics platforms (BaseSpace, Seven Bridges, BugSeq, Isabl) as one directory tree."""

__version__ = "0.1.0"
