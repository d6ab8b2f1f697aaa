using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>
/// A SOCKS5 proxy on loopback (RFC 1928) that carries each CONNECT as a Ferry flow. Only the "no authentication" method is offered:
/// the listener is reachable from this host alone. CONNECT takes IPv4, IPv6 and domain-name destinations (names are resolved by the
/// connector, as with socks5h). UDP ASSOCIATE (RFC 1928 section 7) opens a loopback UDP relay whose datagrams each destination
/// carries as its own UDP flow (see <see cref="Socks5UdpAssociation"/>). BIND is answered 0x07 "command not supported".
/// </summary>
public sealed class Socks5Server : LoopbackProxy
{
    private const byte SocksVersion = 5;
    private const byte NoAuthentication = 0x00;
    private const byte NoAcceptableMethods = 0xFF;
    private const byte CommandConnect = 1;
    private const byte CommandUdpAssociate = 3;
    private const byte AddressIPv4 = 1;
    private const byte AddressDomain = 3;
    private const byte AddressIPv6 = 4;

    /// <summary>RFC 1928 reply codes that do not come from a flow status.</summary>
    public const byte ReplyGeneralFailure = 0x01;
    public const byte ReplyCommandNotSupported = 0x07;
    public const byte ReplyAddressTypeNotSupported = 0x08;

    public Socks5Server(ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions? options = null, ILogger? logger = null)
        : base("socks5", routes, opener, options, logger)
    {
    }

    protected override async Task HandleConnectionAsync(Socket socket, NetworkStream stream, CancellationToken cancellationToken)
    {
        // Longest request: 4 fixed bytes, a 1-byte length and a 255-byte name, a 2-byte port.
        var buffer = ArrayPool<byte>.Shared.Rent(512);
        try
        {
            string host;
            int port;
            byte command;
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                handshake.CancelAfter(Options.HandshakeTimeout);
                var request = await ReadRequestAsync(stream, buffer, handshake.Token);
                if (request is null)
                {
                    return;
                }
                (command, host, port) = request.Value;
            }
            if (command == CommandUdpAssociate)
            {
                await AssociateUdpAsync(socket, stream, cancellationToken);
                return;
            }

            var destination = FlowHeader.FormatHostPort(host, port);
            var flow = await OpenFlowAsync(host, port, early: null, cancellationToken);
            if (!flow.Reply.IsOk)
            {
                await WriteReplyAsync(stream, FlowReply.ToSocks5ReplyCode(flow.Reply.Status), cancellationToken);
                return;
            }
            try
            {
                await WriteReplyAsync(stream, 0x00, cancellationToken);
            }
            catch
            {
                await flow.DisposeAsync();
                throw;
            }
            await CopyAsync(stream, FlowCopier.ShutdownSocketSend, flow, ReadOnlyMemory<byte>.Empty, sentBefore: 0, destination, cancellationToken);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            Log.HandshakeRefused(Logger, Kind, $"no complete SOCKS5 handshake within {Options.HandshakeTimeout.TotalSeconds:0.#} s");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Null when the connection was answered with a refusal (or just closed) during the handshake.
    private async Task<(byte Command, string Host, int Port)?> ReadRequestAsync(NetworkStream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        if (!await ReadAsync(stream, buffer, 2, cancellationToken))
        {
            return null;
        }
        if (buffer[0] != SocksVersion)
        {
            // Not SOCKS5 (SOCKS4 starts with 4, HTTP with a letter): there is no reply format both sides know, so just close.
            Log.HandshakeRefused(Logger, Kind, $"version byte {buffer[0]} is not SOCKS5; point the application at the HTTP proxy or use SOCKS5");
            return null;
        }
        int methodCount = buffer[1];
        if (methodCount == 0 || !await ReadAsync(stream, buffer, methodCount, cancellationToken))
        {
            return null;
        }
        if (Array.IndexOf(buffer, NoAuthentication, 0, methodCount) < 0)
        {
            Log.HandshakeRefused(Logger, Kind, "the application offered no 'no authentication' method; Ferry's loopback proxy takes no credentials");
            await WriteAsync(stream, [SocksVersion, NoAcceptableMethods], cancellationToken);
            return null;
        }
        await WriteAsync(stream, [SocksVersion, NoAuthentication], cancellationToken);

        if (!await ReadAsync(stream, buffer, 4, cancellationToken))
        {
            return null;
        }
        if (buffer[0] != SocksVersion)
        {
            Log.HandshakeRefused(Logger, Kind, $"request version byte {buffer[0]} is not SOCKS5");
            await WriteReplyAsync(stream, ReplyGeneralFailure, cancellationToken);
            return null;
        }
        var command = buffer[1];
        var addressType = buffer[3];
        string host;
        int addressLength;
        switch (addressType)
        {
            case AddressIPv4:
                if (!await ReadAsync(stream, buffer, 4 + 2, cancellationToken))
                {
                    return null;
                }
                addressLength = 4;
                host = new IPAddress(buffer.AsSpan(0, 4)).ToString();
                break;
            case AddressIPv6:
                if (!await ReadAsync(stream, buffer, 16 + 2, cancellationToken))
                {
                    return null;
                }
                addressLength = 16;
                host = new IPAddress(buffer.AsSpan(0, 16)).ToString();
                break;
            case AddressDomain:
                if (!await ReadAsync(stream, buffer, 1, cancellationToken))
                {
                    return null;
                }
                addressLength = buffer[0];
                if (addressLength == 0 || !await ReadAsync(stream, buffer, addressLength + 2, cancellationToken))
                {
                    return null;
                }
                host = Encoding.Latin1.GetString(buffer, 0, addressLength);
                break;
            default:
                Log.HandshakeRefused(Logger, Kind, $"address type {addressType} is unknown (1 IPv4, 3 domain name, 4 IPv6)");
                await WriteReplyAsync(stream, ReplyAddressTypeNotSupported, cancellationToken);
                return null;
        }
        var port = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(addressLength, 2));

        if (command == CommandUdpAssociate)
        {
            // DST.ADDR and DST.PORT name where the client will send from, often zeros; the first datagram fixes its port instead.
            return (command, host, port);
        }
        if (command != CommandConnect)
        {
            var name = command == 2 ? "BIND" : $"command {command}";
            Log.HandshakeRefused(Logger, Kind, $"{name} is not supported; only CONNECT (TCP) and UDP ASSOCIATE are carried");
            await WriteReplyAsync(stream, ReplyCommandNotSupported, cancellationToken);
            return null;
        }
        if (!FlowHeader.TryValidate(FlowProtocol.Tcp, host, port, out var error))
        {
            // A name that cannot be a host cannot be reached: "host unreachable" is the closest RFC 1928 code.
            Log.HandshakeRefused(Logger, Kind, error);
            await WriteReplyAsync(stream, FlowReply.ToSocks5ReplyCode(FlowStatus.NameNotFound), cancellationToken);
            return null;
        }
        return (command, host, port);
    }

    /// <summary>Answers UDP ASSOCIATE with a loopback relay socket and relays until the control connection closes.</summary>
    private async Task AssociateUdpAsync(Socket control, NetworkStream stream, CancellationToken cancellationToken)
    {
        var client = ((IPEndPoint)control.RemoteEndPoint!).Address;
        Socks5UdpAssociation association;
        try
        {
            association = new Socks5UdpAssociation(client, Routes, Opener, Options, $"{Kind} udp", Logger, cancellationToken);
        }
        catch (SocketException e)
        {
            // No relay socket (out of ports or descriptors): the application hears "general failure" instead of a bare close.
            Log.HandshakeRefused(Logger, Kind, $"cannot open a UDP relay socket for {client}: {e.Message}");
            await WriteReplyAsync(stream, ReplyGeneralFailure, cancellationToken);
            return;
        }
        await using (association)
        {
            await WriteReplyAsync(stream, 0x00, cancellationToken, association.RelayEndPoint);
            UdpLog.Associated(Logger, Kind, control.RemoteEndPoint!.ToString()!, association.RelayEndPoint.ToString());
            // RFC 1928: the association ends when the TCP connection that asked for it does; anything sent on it means nothing.
            var sink = new byte[64];
            try
            {
                while (await stream.ReadAsync(sink, cancellationToken) > 0)
                {
                }
            }
            catch (IOException)
            {
            }
        }
    }

    private static async ValueTask<bool> ReadAsync(NetworkStream stream, byte[] buffer, int count, CancellationToken cancellationToken)
        => await stream.ReadAtLeastAsync(buffer.AsMemory(0, count), count, throwOnEndOfStream: false, cancellationToken) == count;

    private static async ValueTask WriteAsync(NetworkStream stream, byte[] bytes, CancellationToken cancellationToken)
        => await stream.WriteAsync(bytes, cancellationToken);

    // BND.ADDR and BND.PORT are zero for CONNECT: the connection's far end is on the connector's network, not an address the application
    // could use. For UDP ASSOCIATE they are the relay socket the application sends its datagrams to.
    private static ValueTask WriteReplyAsync(NetworkStream stream, byte code, CancellationToken cancellationToken, IPEndPoint? bound = null)
    {
        if (bound is null)
        {
            return WriteAsync(stream, [SocksVersion, code, 0x00, AddressIPv4, 0, 0, 0, 0, 0, 0], cancellationToken);
        }
        var address = bound.Address.GetAddressBytes();
        var reply = new byte[4 + address.Length + 2];
        reply[0] = SocksVersion;
        reply[1] = code;
        reply[3] = address.Length == 4 ? AddressIPv4 : AddressIPv6;
        address.CopyTo(reply, 4);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(4 + address.Length), (ushort)bound.Port);
        return WriteAsync(stream, reply, cancellationToken);
    }
}
