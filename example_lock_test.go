package redlease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// A lease is a promise with a deadline: a holder that pauses longer than its
// lease (GC, swap, a stopped VM) can act on a lock it no longer holds. The
// fence makes that safe where the resource checks it: fences only grow, so
// the resource refuses a write with a fence lower than one it has accepted.
func Example() {
	mr, err := miniredis.Run() // an in-memory Redis whose clock we can move
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()

	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx := context.Background()

	// The resource: it remembers the highest fence it accepted.
	var highest int64
	write := func(who string, fence int64) {
		if fence < highest {
			fmt.Printf("%s's write refused: fence %d < %d\n", who, fence, highest)
			return
		}
		highest = fence
		fmt.Printf("%s's write accepted with fence %d\n", who, fence)
	}

	alice, err := locker.Obtain(ctx, "ledger")
	if err != nil {
		log.Fatal(err)
	}
	// Alice's process pauses past her lease, which ends in Redis...
	mr.FastForward(time.Minute)

	// ...so Bob gets the lock, with a larger fence, and writes.
	bob, err := locker.Obtain(ctx, "ledger")
	if err != nil {
		log.Fatal(err)
	}
	write("bob", bob.Fence())
	if err := bob.Release(ctx); err != nil {
		log.Fatal(err)
	}

	// Alice wakes up and writes, unaware: the fence stops her.
	write("alice", alice.Fence())
	fmt.Println(alice.Release(ctx))
	// Output:
	// bob's write accepted with fence 2
	// alice's write refused: fence 1 < 2
	// redlease: lease not held: "ledger": lease expired
}

func ExampleLocker_Do() {
	ctx := context.Background()
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()

	// Run a function while holding the lock. Its context is cancelled if
	// the lease is lost; the lock is always released.
	err := locker.Do(ctx, "invoice:42", func(ctx context.Context) error {
		fmt.Println("charging invoice 42")
		return nil
	})
	fmt.Println("err:", err)

	// The function's error is Do's.
	err = locker.Do(ctx, "invoice:42", func(ctx context.Context) error {
		return errors.New("disk full")
	})
	fmt.Println("err:", err)
	// Output:
	// charging invoice 42
	// err: <nil>
	// err: disk full
}

func ExampleLocker_Obtain() {
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Wait for the lock, at most until ctx ends.
	lock, err := locker.Obtain(ctx, "invoice:42", redlease.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err) // errors.Is(err, redlease.ErrNotObtained), and maybe context.DeadlineExceeded
	}
	defer lock.Release(ctx)

	work := make(chan string, 1)
	go func() { work <- "invoice 42 paid" }()

	// The watchdog renews the lease until Release; if it is lost anyway,
	// Lost closes and the holder must stop writing.
	select {
	case <-lock.Lost():
		fmt.Println("lost:", lock.Err()) // errors.Is(err, redlease.ErrNotHeld)
	case res := <-work:
		fmt.Printf("saving %q with fence %d\n", res, lock.Fence())
	}
	// Output:
	// saving "invoice 42 paid" with fence 1
}

// Obtain waits while another holds the lock. Waiters queue in Redis, first
// come, first served across every process, and a Release hands the lease
// straight to the oldest of them, whose Obtain then returns.
func ExampleLocker_Obtain_wait() {
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx := context.Background()

	first, err := locker.Obtain(ctx, "printer")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first holds the printer with fence", first.Fence())

	got := make(chan *redlease.Lock)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second) // wait at most 5s
		defer cancel()
		lock, err := locker.Obtain(ctx, "printer")
		if err != nil {
			log.Fatal(err)
		}
		got <- lock
	}()

	if err := first.Release(ctx); err != nil {
		log.Fatal(err)
	}
	second := <-got
	fmt.Println("second holds the printer with fence", second.Fence())
	if err := second.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// first holds the printer with fence 1
	// second holds the printer with fence 2
}

func ExampleLocker_TryObtain() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()

	// Two Lockers, as two processes would have.
	a := redlease.NewLocker(client)
	defer a.Close()
	b := redlease.NewLocker(client)
	defer b.Close()

	lock, err := a.TryObtain(ctx, "cron:cleanup")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("a runs the cleanup")

	// One attempt, no waiting: b skips this run.
	_, err = b.TryObtain(ctx, "cron:cleanup")
	fmt.Println("b obtained it:", !errors.Is(err, redlease.ErrNotObtained))

	if err := lock.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// a runs the cleanup
	// b obtained it: false
}

// Without the watchdog, the holder renews its lease itself with Refresh,
// which fails, and closes Lost, once the lease is gone.
func ExampleLock_Refresh() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour) // the export's time budget
	defer cancel()
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()

	lock, err := locker.Obtain(ctx, "export", redlease.WithTTL(time.Minute), redlease.WithoutWatchdog())
	if err != nil {
		log.Fatal(err)
	}
	// The export takes longer than planned: two more minutes.
	if err := lock.Refresh(ctx, 2*time.Minute); err != nil {
		log.Fatal(err)
	}
	ttl, err := lock.TTL(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("time left:", ttl.Round(time.Second))

	// Redis loses the lease (a restart without persistence, say).
	if err := client.FlushAll(ctx).Err(); err != nil {
		log.Fatal(err)
	}
	err = lock.Refresh(ctx, 2*time.Minute)
	fmt.Println("still held:", !errors.Is(err, redlease.ErrNotHeld))
	<-lock.Lost()
	fmt.Println(lock.Err())
	// Output:
	// time left: 2m0s
	// still held: false
	// redlease: lease not held: "export": lease expired
}
