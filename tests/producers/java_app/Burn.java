// A small Java program under the real pyroscope-java agent (tests/producers/test_java_agent.py):
// heavyWork does about twice lightWork's CPU; allocate() allocates, contend() takes a contended lock.
import java.util.ArrayList;
import java.util.List;

public class Burn {
    static volatile long sink;
    static final Object LOCK = new Object();
    static List<byte[]> keep = new ArrayList<>();

    static void heavyWork(int n) { long s = 0; for (int i = 0; i < n; i++) { s += (long) i * 2654435761L; } sink += s; }
    static void lightWork(int n) { long s = 0; for (int i = 0; i < n; i++) { s ^= (long) i * 40503L; } sink += s; }
    static void allocate() { keep.add(new byte[64 * 1024]); if (keep.size() > 64) { keep.clear(); } }
    static void contend() throws InterruptedException { synchronized (LOCK) { Thread.sleep(2); } }

    public static void main(String[] args) throws Exception {
        long seconds = Long.parseLong(System.getenv().getOrDefault("FW_SECONDS", "8"));
        long end = System.currentTimeMillis() + seconds * 1000;
        Thread locker = new Thread(() -> {
            try { while (System.currentTimeMillis() < end) { contend(); } } catch (InterruptedException e) { }
        }, "locker");
        locker.start();
        while (System.currentTimeMillis() < end) {
            heavyWork(20_000_000);
            lightWork(10_000_000);
            allocate();
            contend();
        }
        locker.join();
        System.out.println("done " + (sink != 0));
    }
}
