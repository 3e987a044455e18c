package redlease

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// With ClusterOptions.ReadOnly, go-redis would put a shard subscription on
// a replica, where the publish script's count of listeners on the master
// cannot see it: Listen subscribes on the master all the same.
func TestClusterTopicListenReadOnly(t *testing.T) {
	cc := startCluster(t)
	ro := cluster.Client(t, func(o *redis.ClusterOptions) { o.ReadOnly = true })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	listener := NewTopic(ro, "t", WithPrefix(uniq(t)))
	events, err := listener.Listen(ctx)
	require.NoError(t, err)
	id, err := NewTopic(cc, "t", WithPrefix(uniq(t))).Publish(ctx, []byte("x"))
	require.NoError(t, err)
	select {
	case ev := <-events:
		require.Equal(t, id, ev.ID)
	case <-ctx.Done():
		t.Fatal("a ReadOnly client's listener heard nothing")
	}
}
