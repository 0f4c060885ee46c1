"""aipara: the Rime input-method assistant's two ZeroMQ services.

``RimeStateActor`` answers the Rime client's REQ socket (tcp 10086) and keeps each
client's state and command outbox; ``AiStreamActor`` streams convert and chat
answers to its DEALER socket (tcp 10087).
"""
