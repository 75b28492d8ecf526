// Aedes on 127.0.0.1:PORT for the tests (tests/aedes_broker.py starts it). In-memory persistence:
// sessions, retained messages and queued QoS 1 messages survive a client's reconnect, not a restart.
'use strict'
const net = require('net')
const aedes = require('aedes')()

const port = parseInt(process.argv[2], 10)
const server = net.createServer(aedes.handle)
server.listen(port, '127.0.0.1', () => console.log(`aedes listening on ${port}`))
server.on('error', (err) => { console.error(err.message); process.exit(1) })
aedes.on('clientError', () => {}) // a client cut mid-packet is the tests' everyday business
// Stopped, it keeps nothing anyway (in-memory persistence): no waiting for clients to leave.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
