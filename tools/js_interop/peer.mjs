// js-libp2p peer for tools/js_interop.py: TCP, Noise, Yamux, identify, ping, GossipSub.
// Prints "LISTEN <multiaddr>" then, per line on stdin:
//   DIAL <multiaddr>            -> "DIALED"
//   PING <peer id>              -> "PINGED <ms>" (js pings the py peer over /ipfs/ping/1.0.0)
//   ECHO <peer id> <protocol>   -> opens a stream to py, writes 64 KiB, reads it back: "ECHOED <bytes>"
// Serves /fognode/interop/echo/1.0.0 (echoes bytes) and relays every message on topic
// fognode/interop/1 back on fognode/interop/echo/1.
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { pipe } from 'it-pipe'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import readline from 'node:readline'

// Node 20 has no Promise.withResolvers (22 has); js-libp2p's queues call it at run time
if (Promise.withResolvers === undefined) {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ emitSelf: false, allowPublishToZeroTopicPeers: true, heartbeatInterval: 500 })
  }
})
await node.handle('/fognode/interop/echo/1.0.0', ({ stream }) => pipe(stream, stream))
node.services.pubsub.subscribe('fognode/interop/1')
node.services.pubsub.addEventListener('message', (evt) => {
  if (evt.detail.topic === 'fognode/interop/1') {
    node.services.pubsub.publish('fognode/interop/echo/1', evt.detail.data).catch((e) => console.log('ERR publish', e.message))
  }
})
console.log('LISTEN ' + node.getMultiaddrs()[0].toString())

const rl = readline.createInterface({ input: process.stdin })
for await (const line of rl) {
  const [cmd, a, b] = line.trim().split(' ')
  try {
    if (cmd === 'DIAL') {
      await node.dial(multiaddr(a)); console.log('DIALED')
    } else if (cmd === 'PING') {
      const ms = await node.services.ping.ping(peerIdFromString(a)); console.log('PINGED ' + ms)
    } else if (cmd === 'ECHO') {
      const stream = await node.dialProtocol(peerIdFromString(a), b)
      const blob = new Uint8Array(65536).fill(7)
      let got = 0
      await pipe([blob], stream, async (source) => { for await (const chunk of source) { got += chunk.byteLength } })
      console.log('ECHOED ' + got)
    } else if (cmd === 'QUIT') {
      break
    }
  } catch (e) {
    console.log('ERR ' + cmd + ' ' + e.message)
  }
}
await node.stop()
process.exit(0)
