// PlaceOrder under a ramping arrival rate (open loop: requests arrive on schedule whatever the
// answers, so a slow server shows as latency, not as a politely slower client), with the same
// mix as the ghz scenario: 85% fills (60% buys, 25% sells), 15% business rejections (FAILED_PRECONDITION).
//
//   k6 run loadtest/k6/place_order.js    (or loadtest/run-k6 place-order)
//
// Environment: WRITE_ADDR (127.0.0.1:50051), ACCOUNTS (1000, created by `loadtest setup`),
// START_RATE (50/s), TARGET_RATE (300/s), RAMP (5s), HOLD (10s), P99_MS (25: the target at
// half capacity). Bounded: ramp + hold + ramp down, then at most 5 s for calls in flight.
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';
import { Rate } from 'k6/metrics';

const ADDR = __ENV.WRITE_ADDR || '127.0.0.1:50051';
const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '1000', 10);
const POOR = Math.max(1, Math.floor(ACCOUNTS / 10));
const START_RATE = parseInt(__ENV.START_RATE || '50', 10);
const TARGET_RATE = parseInt(__ENV.TARGET_RATE || '300', 10);
const RAMP = __ENV.RAMP || '5s';
const HOLD = __ENV.HOLD || '10s';
const P99_MS = __ENV.P99_MS || '25';
const SYMBOLS = ['LT-ALPHA', 'LT-BETA', 'LT-GAMMA', 'LT-DELTA'];

if (!/^(127\.|localhost:)/.test(ADDR)) {
  throw new Error(`${ADDR} is not loopback; load tests only target this machine`);
}

// Business rejections are part of the scenario; anything else (shed, unavailable, internal)
// is an error.
const unexpected = new Rate('unexpected_errors');
const rejected = new Rate('rejected_orders');

export const options = {
  scenarios: {
    place_order: {
      executor: 'ramping-arrival-rate',
      startRate: START_RATE,
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 200,
      stages: [
        { target: TARGET_RATE, duration: RAMP },
        { target: TARGET_RATE, duration: HOLD },
        { target: START_RATE, duration: '2s' },
      ],
      gracefulStop: '5s',
    },
  },
  thresholds: {
    grpc_req_duration: [`p(99)<${P99_MS}`],
    unexpected_errors: ['rate<0.01'],
    // The mix rejects 15% on purpose; far more means setup is missing.
    rejected_orders: ['rate<0.3'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
};

const client = new grpc.Client();

export function setup() {
  // One id per run, shared by every VU, so client order ids are new on every run.
  return { run: Date.now().toString(36) };
}

function order(n, run) {
  const r = n % 20;
  const symbol = SYMBOLS[Math.floor(n / 20) % SYMBOLS.length];
  const account = r === 18
    ? `lt-poor-${String(n % POOR).padStart(6, '0')}`
    : `lt-${String(n % ACCOUNTS).padStart(6, '0')}`;
  const sell = (r >= 12 && r <= 16) || r === 19;
  return {
    account_id: account,
    client_order_id: `k6-${run}-${n}`,
    symbol,
    side: sell ? 'SELL' : 'BUY',
    quantity: r === 19 ? 3000 : r < 12 ? 1 + (n % 3) : 1,
    order_type: r === 17 ? 'LIMIT' : 'MARKET',
    limit_price: r === 17 ? '1.00' : '',
  };
}

export default function (data) {
  if (exec.vu.iterationInScenario === 0) {
    client.connect(ADDR, { plaintext: true, reflect: true, timeout: '5s' });
  }
  const n = exec.scenario.iterationInTest;
  const response = client.invoke('trading.v1.OrderService/PlaceOrder', order(n, data.run), {
    timeout: '5s',
  });
  const ok = response.status === grpc.StatusOK;
  const businessRejection = response.status === grpc.StatusFailedPrecondition;
  rejected.add(businessRejection);
  unexpected.add(!ok && !businessRejection);
  check(response, { 'filled or rejected on purpose': () => ok || businessRejection });
}

export function teardown() {
  client.close();
}
