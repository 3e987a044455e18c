package redlease

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// acquireAcked acquires and then runs WAIT on the same connection, in one
// round trip, for WithReplicaAck; too few acknowledgements give the lease
// back.
func (n *node) acquireAcked(ctx context.Context, lk *Lock) (bool, int64, error) {
	c, err := n.connFor(ctx, lk.rkey)
	if err != nil {
		return false, 0, err
	}
	var wait *redis.Cmd
	script, call := acquireScript.Script, scriptCall{keys: lk.keys()[:2], args: []any{lk.token, lk.ttlMs, ""}}
	if lk.shared {
		script, call = sharedScript.Script, scriptCall{keys: lk.keys(), args: []any{lk.token, lk.ttlMs, lk.limit, "", n.publish}}
	}
	acq := runAll(ctx, c, script, []scriptCall{call}, func(p redis.Pipeliner) {
		wait = p.Do(ctx, "WAIT", lk.replicas, lk.wait.Milliseconds())
	})[0]
	r, err := acq.Int64()
	if err != nil {
		return false, 0, err
	}
	ok, fence := acquireReply(r)
	if !ok {
		return false, fence, nil
	}
	if acked, err := wait.Int64(); err != nil || acked < int64(lk.replicas) {
		_, _ = n.release(context.WithoutCancel(ctx), lk, nil) // routed to the same master by key
		if err == nil {
			err = fmt.Errorf("%d of %d replicas acknowledged within %v", acked, lk.replicas, lk.wait)
		}
		return false, 0, fmt.Errorf("%w: %w", ErrNotObtained, err)
	}
	return true, fence, nil
}

// connFor returns a client whose pipelines reach the master holding key on
// one connection, as WAIT needs.
func (n *node) connFor(ctx context.Context, key string) (redis.UniversalClient, error) {
	switch c := n.client.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, key)
	}
	return nil, fmt.Errorf("%w: WithReplicaAck needs a *redis.Client or *redis.ClusterClient", ErrInvalidArgument)
}
