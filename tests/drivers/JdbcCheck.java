// Real-driver check: pgjdbc through pgtarn in transaction pooling mode.
//
// Usage: java -cp /usr/share/java/postgresql.jar:CLASSES JdbcCheck HOST PORT
//
// THREADS threads, each with its own connection opened with
// prepareThreshold=1, so the driver prepares named server-side statements
// (S_1, S_2, ...) on the first execution and then sends only Bind/Execute:
// in transaction mode those often land on a different server than the
// Parse. Even threads use the default preferQueryMode (extended); odd
// threads set preferQueryMode=extendedCacheEverything, which also turns
// plain Statement queries into named statements. Each thread runs
// ITERATIONS rounds reusing the same PreparedStatement objects, plus a
// transaction (setAutoCommit(false) / commit). Every result is checked.
// Prints "jdbc: N queries OK" and exits 0 on success; on the first failure
// prints what failed (thread, iteration, step, SQLSTATE) and exits 1.
//
// Environment (optional): JDBC_CHECK_THREADS, JDBC_CHECK_ITERATIONS,
// JDBC_CHECK_TIMEOUT (seconds for the whole run).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;

public final class JdbcCheck {
    static final int THREADS = intEnv("JDBC_CHECK_THREADS", 20);
    static final int ITERATIONS = intEnv("JDBC_CHECK_ITERATIONS", 200);
    static final int TIMEOUT_S = intEnv("JDBC_CHECK_TIMEOUT", 120);
    // pgtarn's pool_size for the database: the fresh-server check holds
    // every server but the ones it wants the statement to land on.
    static final int POOL_SIZE = intEnv("JDBC_CHECK_POOL_SIZE", 4);

    static final AtomicLong QUERIES = new AtomicLong();

    static int intEnv(String name, int dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : Integer.parseInt(v);
    }

    static final class CheckFailed extends Exception {
        CheckFailed(String msg, Throwable cause) {
            super(msg, cause);
        }
    }

    static void expect(String what, Object got, Object want) {
        if (!want.equals(got)) {
            throw new IllegalStateException(what + ": got " + got + ", expected " + want);
        }
    }

    static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder(e.getClass().getName()).append(": ").append(e.getMessage());
        if (e instanceof SQLException) {
            String state = ((SQLException) e).getSQLState();
            if (state != null) {
                sb.append(" (SQLSTATE ").append(state).append(')');
            }
        }
        return sb.toString();
    }

    static String url(String host, String port, String extra) {
        return "jdbc:postgresql://" + host + ":" + port + "/app?user=app&password=app-secret"
                + "&prepareThreshold=1&connectTimeout=30&socketTimeout=60" + extra;
    }

    static void worker(String host, String port, int tid, String table) throws CheckFailed {
        String extra = tid % 2 == 0 ? "" : "&preferQueryMode=extendedCacheEverything";
        String step = "connect";
        int i = -1;
        try (Connection c = DriverManager.getConnection(url(host, port, extra))) {
            step = "prepareStatement";
            try (PreparedStatement plusOne = c.prepareStatement("select ?::int + 1");
                    PreparedStatement twoParams = c.prepareStatement("select ?::int * ?::int, 'c' || ?::int");
                    PreparedStatement series = c.prepareStatement(
                            "select g, g * ?::int from generate_series(1, ?::int) g order by g");
                    PreparedStatement insert = c.prepareStatement(
                            "insert into " + table + " (tid, i, val) values (?, ?, ?)");
                    PreparedStatement select = c.prepareStatement(
                            "select val from " + table + " where tid = ? and i = ?");
                    Statement plain = c.createStatement()) {
                for (i = 0; i < ITERATIONS; i++) {
                    step = "PreparedStatement select ?::int + 1";
                    plusOne.setInt(1, i);
                    try (ResultSet rs = plusOne.executeQuery()) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step, rs.getInt(1), i + 1);
                    }

                    step = "PreparedStatement with 3 params";
                    twoParams.setInt(1, i);
                    twoParams.setInt(2, tid);
                    twoParams.setInt(3, tid);
                    try (ResultSet rs = twoParams.executeQuery()) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step + " product", rs.getInt(1), i * tid);
                        expect(step + " text", rs.getString(2), "c" + tid);
                    }

                    step = "PreparedStatement generate_series";
                    series.setInt(1, i);
                    series.setInt(2, 5);
                    try (ResultSet rs = series.executeQuery()) {
                        for (int g = 1; g <= 5; g++) {
                            expect(step + " (row " + g + ")", rs.next(), true);
                            expect(step + " g", rs.getInt(1), g);
                            expect(step + " g*i", rs.getInt(2), g * i);
                        }
                        expect(step + " (no more rows)", rs.next(), false);
                    }

                    step = "transaction (setAutoCommit(false)) insert + select + commit";
                    c.setAutoCommit(false);
                    insert.setInt(1, tid);
                    insert.setInt(2, i);
                    insert.setString(3, "v" + tid + "-" + i);
                    expect(step + " insert count", insert.executeUpdate(), 1);
                    select.setInt(1, tid);
                    select.setInt(2, i);
                    try (ResultSet rs = select.executeQuery()) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step, rs.getString(1), "v" + tid + "-" + i);
                    }
                    c.commit();
                    c.setAutoCommit(true);

                    step = "new PreparedStatement per iteration (driver statement cache)";
                    try (PreparedStatement ps = c.prepareStatement("select ?::int - ?::int")) {
                        for (int k = 0; k < 3; k++) {
                            ps.setInt(1, i);
                            ps.setInt(2, k);
                            try (ResultSet rs = ps.executeQuery()) {
                                expect(step + " (row)", rs.next(), true);
                                expect(step, rs.getInt(1), i - k);
                            }
                        }
                    }

                    step = "plain Statement";
                    try (ResultSet rs = plain.executeQuery("select 40 + 2")) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step, rs.getInt(1), 42);
                    }

                    QUERIES.addAndGet(10);
                }
                step = "final count";
                try (PreparedStatement ps = c.prepareStatement("select count(*) from " + table + " where tid = ?")) {
                    ps.setInt(1, tid);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step, rs.getInt(1), ITERATIONS);
                    }
                }
                QUERIES.incrementAndGet();
            }
        } catch (Exception e) {
            throw new CheckFailed("thread " + tid + " (" + (extra.isEmpty() ? "preferQueryMode=extended" : extra.substring(1))
                    + "), iteration " + i + ", step '" + step + "': " + describe(e), e);
        }
    }

    static void admin(String host, String port, String sql) throws SQLException {
        try (Connection c = DriverManager.getConnection(url(host, port, ""));
                Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    // Two connections prepare `select * from TABLE`; one adds a column. With
    // Postgres directly each gets `cached plan must not change result type`
    // once, which pgjdbc recognises by the error's routine field and heals by
    // re-preparing: both see the new column. Through pgtarn only the first
    // gets Postgres' own error; pgtarn refuses the other's outdated
    // statement, and its error must look the same.
    static void schemaChange(String host, String port, String table) throws CheckFailed {
        String step = "schema change: setup";
        try (Connection a = DriverManager.getConnection(url(host, port, ""));
                Connection b = DriverManager.getConnection(url(host, port, ""));
                Statement ddl = a.createStatement()) {
            ddl.execute("create table " + table + " (x int)");
            ddl.execute("insert into " + table + " values (1)");
            try (PreparedStatement pa = a.prepareStatement("select * from " + table);
                    PreparedStatement pb = b.prepareStatement("select * from " + table)) {
                for (PreparedStatement ps : new PreparedStatement[] {pa, pb}) {
                    step = "schema change: first execution";
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(step + " columns", rs.getMetaData().getColumnCount(), 1);
                    }
                }
                step = "schema change: alter table";
                ddl.execute("alter table " + table + " add column y int default 2");
                for (PreparedStatement ps : new PreparedStatement[] {pb, pa}) {
                    step = "schema change: execution after the alter on " + (ps == pa ? "a" : "b");
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(step + " (row)", rs.next(), true);
                        expect(step + " y", rs.getInt(2), 2);
                    }
                }
            } finally {
                ddl.execute("drop table if exists " + table);
            }
        } catch (Exception e) {
            throw new CheckFailed("step '" + step + "': " + describe(e), e);
        }
    }

    // A statement prepared before a column was added on another connection,
    // used next on a server that never had it (so no server has reported
    // the change): with Postgres directly it fails with `cached plan must
    // not change result type`, which pgjdbc heals in autocommit mode by
    // re-preparing. pgtarn must fail it the same way, not return rows of
    // the new shape under the old description.
    static void freshServerSchemaChange(String host, String port, String table) throws CheckFailed {
        String step = "fresh server: setup";
        List<Connection> others = new ArrayList<>();
        try (Connection a = DriverManager.getConnection(url(host, port, ""));
                Statement setup = a.createStatement()) {
            setup.execute("create table " + table + " (x int)");
            setup.execute("insert into " + table + " values (1)");
            for (int i = 0; i < POOL_SIZE; i++) {
                Connection c = DriverManager.getConnection(url(host, port, ""));
                c.setAutoCommit(false);
                others.add(c);
            }
            try (PreparedStatement pa = a.prepareStatement("select * from " + table)) {
                // a prepares the statement on server X, which its
                // transaction keeps while the other servers are taken.
                step = "fresh server: first execution, in a transaction";
                a.setAutoCommit(false);
                try (ResultSet rs = pa.executeQuery()) {
                    expect(step + " columns", rs.getMetaData().getColumnCount(), 1);
                }
                for (Connection c : others.subList(0, POOL_SIZE - 1)) {
                    try (Statement s = c.createStatement()) {
                        s.execute("select 1");
                    }
                }
                a.commit();
                a.setAutoCommit(true);
                // The last one takes X; the first adds the column, then the
                // others give back servers that never had the statement.
                step = "fresh server: holding X";
                try (Statement s = others.get(POOL_SIZE - 1).createStatement()) {
                    s.execute("select 1");
                }
                step = "fresh server: alter table";
                try (Statement s = others.get(0).createStatement()) {
                    s.execute("alter table " + table + " add column y int default 2");
                }
                for (Connection c : others.subList(0, POOL_SIZE - 1)) {
                    c.commit();
                }
                step = "fresh server: execution after the alter";
                try (ResultSet rs = pa.executeQuery()) {
                    expect(step + " columns", rs.getMetaData().getColumnCount(), 2);
                    expect(step + " (row)", rs.next(), true);
                    expect(step + " y", rs.getInt(2), 2);
                }
                others.get(POOL_SIZE - 1).commit();
            } finally {
                for (Connection c : others) {
                    c.close();
                }
                setup.execute("drop table if exists " + table);
            }
        } catch (Exception e) {
            throw new CheckFailed("step '" + step + "': " + describe(e), e);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: JdbcCheck HOST PORT");
            System.exit(64);
        }
        String host = args[0];
        String port = args[1];
        String table = "pgtarn_driver_jdbc_" + ProcessHandle.current().pid();
        long start = System.nanoTime();
        int code = 0;
        ExecutorService pool = Executors.newFixedThreadPool(THREADS);
        try {
            admin(host, port, "drop table if exists " + table);
            admin(host, port, "create table " + table
                    + " (tid int not null, i int not null, val text not null, primary key (tid, i))");
            List<Future<?>> futures = new ArrayList<>();
            for (int t = 1; t <= THREADS; t++) {
                final int tid = t;
                futures.add(pool.submit(() -> {
                    worker(host, port, tid, table);
                    return null;
                }));
            }
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
            for (Future<?> f : futures) {
                try {
                    f.get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
                } catch (ExecutionException e) {
                    Throwable cause = e.getCause();
                    System.err.println("jdbc: FAILED: " + cause.getMessage());
                    if (cause.getCause() != null) {
                        cause.getCause().printStackTrace();
                    }
                    code = 1;
                    break;
                } catch (TimeoutException e) {
                    System.err.println("jdbc: FAILED: timed out after " + TIMEOUT_S + "s");
                    code = 1;
                    break;
                }
            }
            if (code == 0) {
                try {
                    schemaChange(host, port, table + "_ddl");
                    freshServerSchemaChange(host, port, table + "_fresh");
                } catch (CheckFailed e) {
                    System.err.println("jdbc: FAILED: " + e.getMessage());
                    code = 1;
                }
            }
        } catch (SQLException e) {
            System.err.println("jdbc: FAILED: setup: " + describe(e));
            e.printStackTrace();
            code = 1;
        } finally {
            pool.shutdownNow();
            try {
                admin(host, port, "drop table if exists " + table);
            } catch (SQLException e) {
                System.err.println("jdbc: warning: could not drop " + table + ": " + describe(e));
            }
        }
        if (code == 0) {
            double secs = (System.nanoTime() - start) / 1e9;
            System.out.printf("jdbc: %d queries OK (%d connections x %d iterations, %.1fs, pgjdbc %s)%n",
                    QUERIES.get(), THREADS, ITERATIONS, secs, org.postgresql.util.DriverInfo.DRIVER_VERSION);
        }
        System.out.flush();
        System.exit(code);
    }
}
