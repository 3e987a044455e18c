package redlease_test

import (
	"log"
	"sync"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// startRedis starts an in-memory Redis (miniredis) for one example and
// returns a client on it, and a function that closes both (it may be called
// more than once). In a program, connect to your Redis instead:
//
//	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	defer client.Close()
func startRedis() (*redis.Client, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	return client, sync.OnceFunc(func() {
		client.Close()
		mr.Close()
	})
}
