import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { metricSum, parsePrometheus } from '../../server/dashboard.js'

const TEXT = `# HELP resound_connected Open connections
# TYPE resound_connected gauge
resound_connected{app_id="424242"} 3
resound_connected{app_id="other"} 9
resound_subscriptions{app_id="424242",kind="presence"} 4
resound_subscriptions{app_id="424242",kind="private"} 2
resound_ws_messages_sent_total{app_id="424242"} 1.5e3
resound_weird{app_id="4\\"2"} 1
resound_http_transmitted_bytes 15
bad line
`

describe('Prometheus parsing', () => {
  const m = parsePrometheus(TEXT)

  test('reads samples with and without labels, including exponents and escapes', () => {
    assert.equal(metricSum(m, 'resound_ws_messages_sent_total'), 1500)
    assert.equal(metricSum(m, 'resound_http_transmitted_bytes'), 15)
    assert.equal(m.get('resound_weird')![0]!.labels.app_id, '4"2')
  })

  test('sums the series matching the labels asked for', () => {
    assert.equal(metricSum(m, 'resound_connected', { app_id: '424242' }), 3)
    assert.equal(metricSum(m, 'resound_subscriptions', { app_id: '424242' }), 6)
    assert.equal(metricSum(m, 'resound_missing', { app_id: '424242' }), 0)
  })
})
