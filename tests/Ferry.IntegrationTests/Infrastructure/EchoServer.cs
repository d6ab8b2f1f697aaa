using System.Net;
using System.Net.Sockets;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A private TCP service for tests: echoes every byte back and half-closes when the client does.</summary>
public sealed class EchoServer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accept;

    public EchoServer(IPAddress address)
    {
        _listener = new TcpListener(address, 0);
        _listener.Start();
        _accept = Task.Run(AcceptAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public int Accepted;

    /// <summary>Connections that carried at least one byte (connectors' reachability checks connect and hang up without sending).</summary>
    public int Carried;

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptSocketAsync(_stop.Token);
                Interlocked.Increment(ref Accepted);
                _ = Task.Run(async () =>
                {
                    using (client)
                    {
                        var buffer = new byte[64 * 1024];
                        var carried = false;
                        try
                        {
                            int read;
                            while ((read = await client.ReceiveAsync(buffer, SocketFlags.None, _stop.Token)) > 0)
                            {
                                if (!carried)
                                {
                                    carried = true;
                                    Interlocked.Increment(ref Carried);
                                }
                                await client.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, _stop.Token);
                            }
                            client.Shutdown(SocketShutdown.Send);
                        }
                        catch (Exception e) when (e is SocketException or OperationCanceledException)
                        {
                        }
                    }
                });
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accept;
        _stop.Dispose();
    }
}
