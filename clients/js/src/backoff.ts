// Reconnect delays: exponential, capped, with jitter so that many clients dropped at once do not come back
// in step (a gateway that dies drops thousands of connections in the same millisecond).

export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  factor: number;
}

/**
 * The delay before attempt `attempt` (0 for the first retry): "equal jitter", uniformly between half and
 * all of the capped exponential value, so that it never collapses to zero and still spreads clients.
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxMs, policy.initialMs * Math.pow(policy.factor, Math.max(0, attempt)));
  return Math.round(exp / 2 + random() * (exp / 2));
}
