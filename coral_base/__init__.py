"""What both programs stand on: the wire stubs, the error base, logging, backoff, durations, tables.

The node agent (``cri_agent``) and the colony (``coral_colony``) import this
package and never each other. Nothing here imports either of them.
"""

__version__ = "0.1.0"
