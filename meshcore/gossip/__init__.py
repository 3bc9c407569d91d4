"""Gossip: SWIM membership with Lifeguard, encrypted datagrams, signed catalog records.

`swim.Swim` is the sans-IO state machine; `adapter.GossipNode` drives it on
asyncio UDP and TCP; `profiles` holds the timings; `records` the catalog
rules; `keyring` the AES-GCM keys; `codec` the wire format.
"""
