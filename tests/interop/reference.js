// Drives the reference implementation (npm secret-handshake + pull-box-stream) for p2pnode's
// interop tests. Usage: node reference.js CONFIG.json, where CONFIG.mode is one of:
//   "vectors": recompute spec/vectors/transport handshake + box-stream outputs from their inputs
//   "server":  listen on 127.0.0.1, print {"port"}, run one secret-handshake session
//   "client":  dial CONFIG.port, run one secret-handshake session
// A session sends CONFIG.send_hex in ONE write, then says goodbye (ends its sink), reads until the
// peer's goodbye, and prints one JSON line: remote key, hash and length of what it received, or error.
'use strict'
var fs = require('fs')
var net = require('net')
var crypto = require('crypto')
var sodium = require('chloride')
var pull = require('pull-stream')
var toPull = require('stream-to-pull-stream')
var shs = require('secret-handshake')
var stateless = require('secret-handshake/crypto')
var boxes = require('pull-box-stream')

var config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
function hex (s) { return Buffer.from(s, 'hex') }
function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function keypair (seedHex) { return sodium.crypto_sign_seed_keypair(hex(seedHex)) }

function vectors () {
  var results = []
  config.handshakes.forEach(function (v) {
    var appKey = hex(v.network_key)
    var alice = keypair(v.client_seed)
    var bob = keypair(v.server_seed)
    function side (kp, ephSecret, ephPublic) {
      return {
        kx_sk: hex(ephSecret), kx_pk: hex(ephPublic),
        publicKey: kp.publicKey, secretKey: kp.secretKey,
        app_mac: sodium.crypto_auth(hex(ephPublic), appKey)
      }
    }
    var client = { app_key: appKey, local: side(alice, v.client_eph_secret, v.client_eph_public),
      remote: { publicKey: bob.publicKey } }
    var server = { app_key: appKey, local: side(bob, v.server_eph_secret, v.server_eph_public), remote: {} }
    var r = {}
    r.client_hello = stateless.createChallenge(client).toString('hex')
    server = stateless.verifyChallenge(server, hex(r.client_hello))
    r.server_hello = stateless.createChallenge(server).toString('hex')
    client = stateless.clientVerifyChallenge(client, hex(r.server_hello))
    r.client_auth = stateless.clientCreateAuth(client).toString('hex')
    server = stateless.serverVerifyAuth(server, hex(r.client_auth))
    r.server_accept = stateless.serverCreateAccept(server).toString('hex')
    client = stateless.clientVerifyAccept(client, hex(r.server_accept))
    if (!client || !server) throw new Error('reference rejected our vector inputs')
    client = stateless.clean(client); server = stateless.clean(server)
    r.client_encrypt_key = client.encryptKey.toString('hex')
    r.client_encrypt_nonce = client.remote.app_mac.slice(0, 24).toString('hex')
    r.server_encrypt_key = server.encryptKey.toString('hex')
    r.server_encrypt_nonce = server.remote.app_mac.slice(0, 24).toString('hex')
    r.client_decrypt_key = client.decryptKey.toString('hex')
    r.server_decrypt_key = server.decryptKey.toString('hex')
    results.push(r)
  })
  var streams = []
  var pending = config.boxstreams.length
  config.boxstreams.forEach(function (v, i) {
    pull(
      pull.values(v.writes.map(hex)),
      boxes.createBoxStream(hex(v.key), hex(v.nonce)),
      pull.collect(function (err, bufs) {
        if (err) throw err
        streams[i] = Buffer.concat(bufs).toString('hex')
        if (--pending === 0) out({ handshakes: results, boxstreams: streams })
      })
    )
  })
}

function session (err, stream) {
  if (err) { out({ error: String(err.message || err) }); return finish() }
  pull(pull.values([hex(config.send_hex)]), stream.sink)
  pull(stream.source, pull.collect(function (err, bufs) {
    var all = Buffer.concat(bufs || [])
    out({
      remote: stream.remote.toString('hex'),
      received_len: all.length,
      received_sha256: crypto.createHash('sha256').update(all).digest('hex'),
      error: err ? String(err.message || err) : null
    })
    finish()
  }))
}

var server = null
function finish () {
  if (server) server.close()
  setTimeout(function () { process.exit(0) }, 50)
}

function run () {
  var me = keypair(config.seed)
  var appKey = hex(config.network_key)
  var timeout = 5000
  if (config.mode === 'server') {
    var accept = shs.createServer(me, function (pub, cb) { cb(null, true) }, appKey, timeout)
    server = net.createServer(function (socket) {
      var s = toPull.duplex(socket)
      var secure = accept(session)
      pull(s, secure, s)
    })
    server.listen(0, '127.0.0.1', function () {
      out({ port: server.address().port, public_key: me.publicKey.toString('hex') })
    })
  } else {
    var dial = shs.createClient(me, appKey, timeout)
    var socket = net.connect(config.port, '127.0.0.1', function () {
      var s = toPull.duplex(socket)
      var secure = dial(hex(config.server_key), session)
      pull(s, secure, s)
    })
    socket.on('error', function (e) { out({ error: 'socket: ' + e.message }); finish() })
  }
}

setTimeout(function () { out({ error: 'reference timed out' }); process.exit(2) }, 15000).unref()
if (config.mode === 'vectors') vectors()
else run()
