using System.Collections;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;

namespace Ferry.Quic.Tests;

/// <summary>Runs alone: process-wide memory and descriptor counts mean nothing while other tests run beside it.</summary>
[CollectionDefinition(nameof(LeakTestCollection), DisableParallelization = true)]
public sealed class LeakTestCollection;

/// <summary>Issue 4: ten thousand connections opened and closed leave memory, descriptors and endpoint tables flat.</summary>
[Collection(nameof(LeakTestCollection))]
public sealed class LeakTests : QuicTestBase
{
    private const int Batch = 16;

    [Fact]
    public async Task Ten_thousand_connections_opened_and_closed_leave_memory_and_handles_flat()
    {
        const int Warmup = 500;
        const int Connections = 10_000;
        var tls = ClientTls();
        var watch = Stopwatch.StartNew();

        await RunConnectionsAsync(Warmup, tls);
        await WaitForEndpointsToEmptyAsync();
        var before = Sample();
        Report($"after {Warmup} warm-up connections: {before}");

        for (int done = 0; done < Connections; done += 2000)
        {
            await RunConnectionsAsync(2000, tls);
            Report($"after {done + 2000,5} more: {Sample()} ({watch.Elapsed.TotalSeconds:F0} s)");
        }

        await WaitForEndpointsToEmptyAsync();
        var after = Sample();
        Report($"end, closing periods over: {after}");
        Report($"growth over {Connections} connections: managed {(after.Managed - before.Managed) / 1024.0 / 1024:F2} MB, RSS {(after.Rss - before.Rss) / 1024.0 / 1024:F2} MB, fds {after.Fds - before.Fds}, threads {after.Threads - before.Threads}; {watch.Elapsed.TotalSeconds:F1} s in all");

        Assert.InRange(after.Managed - before.Managed, long.MinValue, 20L << 20);
        Assert.InRange(after.Rss - before.Rss, long.MinValue, 32L << 20); // seen: 0.1 - 9.3 MB, mostly malloc arenas settling early
        Assert.InRange(after.Fds - before.Fds, int.MinValue, 50);
    }

    // Each connection: mutual-TLS handshake, one stream with a byte each way, close from the client.
    private async Task RunConnectionsAsync(int count, QuicTlsOptions tls)
    {
        for (int i = 0; i < count; i += Batch)
        {
            var accepts = Task.Run(async () =>
            {
                var servers = new List<Task>();
                for (int j = 0; j < Batch; j++)
                {
                    var connection = await Server.AcceptConnectionAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
                    servers.Add(ServeOneAsync(connection));
                }

                await Task.WhenAll(servers);
            }, Ct);
            var clients = Enumerable.Range(0, Batch).Select(_ => Task.Run(async () =>
            {
                await using var connection = await Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct);
                await using var stream = await connection.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
                await stream.WriteAsync(new byte[] { 1 }, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
                Assert.Equal([2], await HandshakeTests.ReadAllAsync(stream).WaitAsync(Timeout, Ct));
                await connection.CloseAsync(0, null, Ct).AsTask().WaitAsync(Timeout, Ct);
            }, Ct)).ToArray();
            await Task.WhenAll(clients).WaitAsync(Timeout, Ct);
            await accepts.WaitAsync(Timeout, Ct);
        }
    }

    private static async Task ServeOneAsync(QuicConnection connection)
    {
        await using (connection)
        {
            await using var stream = await connection.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
            Assert.Equal([1], await HandshakeTests.ReadAllAsync(stream).WaitAsync(Timeout, Ct));
            await stream.WriteAsync(new byte[] { 2 }, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
            await connection.Closed.WaitAsync(Timeout, Ct);
        }
    }

    // Connections leave the endpoint tables at once; their closing-period records (2-10 s) must go too.
    private async Task WaitForEndpointsToEmptyAsync()
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var counts = new[] { Server, Client }.Select(e => (Live: TableCount(e, "_connections"), Closing: TableCount(e, "_closing"))).ToArray();
            if (counts.All(c => c.Live == 0 && c.Closing == 0))
            {
                return;
            }

            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(20), $"endpoint tables still hold (live, closing) = {string.Join(", ", counts)}");
            await Task.Delay(100, Ct);
        }
    }

    // The endpoint exposes no counters yet (metrics are listed under "not done"), so read its two tables directly.
    private static int TableCount(QuicEndpoint endpoint, string field)
    {
        var table = typeof(QuicEndpoint).GetField(field, BindingFlags.NonPublic | BindingFlags.Instance)?.GetValue(endpoint) as ICollection
            ?? throw new InvalidOperationException($"QuicEndpoint.{field} is gone; update this test");
        return table.Count;
    }

    private static Snapshot Sample()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long managed = GC.GetTotalMemory(forceFullCollection: true);
        using var process = Process.GetCurrentProcess();
        int fds = Directory.GetFiles("/proc/self/fd").Length;
        long rss = 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                rss = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }

        return new Snapshot(managed, rss, fds, process.Threads.Count);
    }

    private static void Report(string line)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        TestContext.Current.SendDiagnosticMessage(line);
    }

    private readonly record struct Snapshot(long Managed, long Rss, int Fds, int Threads)
    {
        public override string ToString() =>
            string.Create(CultureInfo.InvariantCulture, $"managed {Managed / 1024.0 / 1024:F2} MB, RSS {Rss / 1024.0 / 1024:F1} MB, fds {Fds}, threads {Threads}");
    }
}
