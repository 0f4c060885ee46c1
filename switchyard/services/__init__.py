"""The services: one package per system switchyard serves.

``aipara`` (Rime input-method assistant), ``inference`` (meeting-system AI worker),
``tensor`` (Tech Renaissance tensor sessions) and ``robot`` (robot control
backend). Each package re-exports its user API; services never import each other.
"""
