package redlease

// Subscription returns the Queue of the topic's subscription called name,
// as [Topic.Subscribe] would, without creating it or touching Redis: for
// tools that read or settle an existing subscription's messages (Stats,
// Peek, dead letters) and must not bring back one that was removed. A
// subscription that does not exist reads as empty. opts are applied after
// the Topic's, as with Subscribe.
func (t *Topic) Subscription(name string, opts ...QueueOption) (*Queue, error) {
	return t.subscription(name, opts)
}
