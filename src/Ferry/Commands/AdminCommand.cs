using System.CommandLine;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.Security;

namespace Ferry.Cli.Commands;

/// <summary>'ferry admin': the admin API from the command line. Every command takes --json.</summary>
internal static class AdminCommand
{
    private static readonly Option<string?> Controller = new("--controller") { Description = "Controller URL (or FERRY_CONTROLLER)", Recursive = true };
    private static readonly Option<string?> ApiKey = new("--api-key") { Description = "Admin API key (or FERRY_API_KEY)", Recursive = true };
    private static readonly Option<string?> Fingerprint = new("--controller-fingerprint") { Description = "SHA-256 fingerprint of the controller's TLS certificate (or FERRY_CONTROLLER_FINGERPRINT)", Recursive = true };
    private static readonly Option<string?> Ca = new("--controller-ca") { Description = "PEM file of the CA that signed the controller's TLS certificate", Recursive = true };
    private static readonly Option<bool> Json = new("--json") { Description = "Print JSON instead of a table", Recursive = true };

    public static Command Create()
    {
        var admin = new Command("admin", "Manage the deployment through the controller's admin API.") { Controller, ApiKey, Fingerprint, Ca, Json };
        admin.Subcommands.Add(Networks());
        admin.Subcommands.Add(Connectors());
        admin.Subcommands.Add(Relays());
        admin.Subcommands.Add(Resources());
        admin.Subcommands.Add(Groups());
        admin.Subcommands.Add(Operators());
        admin.Subcommands.Add(Users());
        admin.Subcommands.Add(ServiceAccounts());
        admin.Subcommands.Add(Devices());
        admin.Subcommands.Add(Policies());
        admin.Subcommands.Add(Audit());
        admin.Subcommands.Add(SecurityEvents());
        return admin;
    }

    private static Command Networks()
    {
        var group = new Command("network", "Remote networks.");
        var name = new Argument<string>("name") { Description = "Network name" };
        var dns = new Option<string?>("--dns-server") { Description = "DNS server (IP[:port]) that connectors of this network resolve names with" };
        var exit = new Option<bool>("--exit") { Description = "Mark as an exit network (public destinations leave from its connectors)" };
        var mfa = new Option<bool>("--require-mfa") { Description = "Devices need a fresh second factor ('ferry client mfa') to reach this network" };
        var mfaIdle = new Option<int?>("--mfa-idle-timeout") { Description = "Seconds without traffic after which a device's second factor lapses (default 900; with --require-mfa)" };
        group.Subcommands.Add(Action(new Command("create", "Create a remote network.") { name, dns, exit, mfa, mfaIdle }, async (p, c, ct) =>
            Print(p, await c.PostAsync<NetworkView>("/api/v1/networks", new NetworkCreateRequest(p.GetValue(name)!, p.GetValue(dns), p.GetValue(exit), p.GetValue(mfa), p.GetValue(mfaIdle)), ct), NetworkRows)));
        group.Subcommands.Add(Action(new Command("list", "List remote networks."), async (p, c, ct) =>
            Print(p, await c.GetAsync<NetworkView[]>("/api/v1/networks", ct), NetworkRows)));
        var setName = new Argument<string>("network") { Description = "Network name or id" };
        var setDns = new Option<string?>("--dns-server") { Description = "DNS server (IP[:port]) for resource names; 'none' to use each connector host's resolver" };
        var setExit = new Option<bool?>("--exit") { Description = "true: an exit network (public destinations allowed); false: private destinations only" };
        var setMfa = new Option<bool>("--require-mfa") { Description = "Devices need a fresh second factor ('ferry client mfa') to reach this network" };
        var setNoMfa = new Option<bool>("--no-require-mfa") { Description = "Stop requiring a second factor" };
        var setMfaIdle = new Option<int?>("--mfa-idle-timeout") { Description = "Seconds without traffic after which a device's second factor lapses" };
        group.Subcommands.Add(Action(new Command("set", "Change a remote network's DNS server, exit flag or second-factor requirement; its connectors and clients apply it at once.")
        {
            setName, setDns, setExit, setMfa, setNoMfa, setMfaIdle,
        }, async (p, c, ct) =>
        {
            var dnsValue = p.GetValue(setDns);
            if (p.GetValue(setMfa) && p.GetValue(setNoMfa))
            {
                throw new CliException("--require-mfa and --no-require-mfa contradict each other: give one", 2);
            }
            bool? requireMfa = p.GetValue(setMfa) ? true : p.GetValue(setNoMfa) ? false : null;
            if (dnsValue is null && p.GetValue(setExit) is null && requireMfa is null && p.GetValue(setMfaIdle) is null)
            {
                throw new CliException("nothing to change: give --dns-server, --exit, --require-mfa, --no-require-mfa or --mfa-idle-timeout", 2);
            }
            var request = new NetworkUpdateRequest(string.Equals(dnsValue, "none", StringComparison.OrdinalIgnoreCase) ? "" : dnsValue, p.GetValue(setExit), requireMfa, p.GetValue(setMfaIdle));
            return Print(p, await c.PatchAsync<NetworkView>($"/api/v1/networks/{Esc(p.GetValue(setName))}", request, ct), NetworkRows);
        }));
        var showName = new Argument<string>("network") { Description = "Network name or id" };
        group.Subcommands.Add(Action(new Command("show", "Show a remote network.") { showName }, async (p, c, ct) =>
            Print(p, await c.GetAsync<NetworkView>($"/api/v1/networks/{Esc(p.GetValue(showName))}", ct), NetworkRows)));
        var deleteName = new Argument<string>("network") { Description = "Network name or id" };
        group.Subcommands.Add(Action(new Command("delete", "Delete an empty remote network.") { deleteName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/networks/{Esc(p.GetValue(deleteName))}", ct);
            return Done(p, $"network '{p.GetValue(deleteName)}' deleted");
        }));
        return group;
    }

    private static IEnumerable<string?[]> NetworkRows(NetworkView[] all) =>
        all.Select(n => new[]
        {
            n.Name, n.Id, n.DnsServer, n.Exit ? "yes" : "no",
            n.MfaIdleTimeoutSeconds is { } idle ? $"yes (idle {idle.ToString(System.Globalization.CultureInfo.InvariantCulture)} s)" : "no",
            n.Connectors.ToString(System.Globalization.CultureInfo.InvariantCulture), n.Resources.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });

    private static int Print(ParseResult p, NetworkView[] all, Func<NetworkView[], IEnumerable<string?[]>> rows)
        => Emit(p, all, () => Output.Table(["NAME", "ID", "DNS", "EXIT", "MFA", "CONNECTORS", "RESOURCES"], rows(all)));

    private static int Print(ParseResult p, NetworkView one, Func<NetworkView[], IEnumerable<string?[]>> rows)
        => Emit(p, one, () => Output.Table(["NAME", "ID", "DNS", "EXIT", "MFA", "CONNECTORS", "RESOURCES"], rows([one])));

    private static Command Connectors()
    {
        var group = new Command("connector", "Connectors: the daemons inside remote networks.");
        var network = new Option<string>("--network") { Description = "Remote network the connector serves", Required = true };
        var name = new Option<string?>("--name") { Description = "Connector name (generated when omitted)" };
        var location = new Option<string?>("--location") { Description = "REGION or LAT,LON for geographic routing" };
        group.Subcommands.Add(Action(new Command("provision", "Provision a connector and print its token pair (shown once) and how to run it.") { network, name, location }, async (p, c, ct) =>
        {
            var result = await c.PostAsync<ConnectorProvisioned>("/api/v1/connectors", new ConnectorProvisionRequest(p.GetValue(network)!, p.GetValue(name), p.GetValue(location)), ct);
            return PrintProvisioned(p, $"Connector '{result.Connector.Name}' ({result.Connector.Id}) provisioned in network '{result.Connector.Network}'.", "connector", result.Tokens, result.Deploy);
        }));
        var listNetwork = new Option<string?>("--network") { Description = "Only connectors of this network" };
        group.Subcommands.Add(Action(new Command("list", "List connectors with their state.") { listNetwork }, async (p, c, ct) =>
        {
            var all = await c.GetAsync<ConnectorView[]>("/api/v1/connectors" + (p.GetValue(listNetwork) is { } n ? $"?network={Esc(n)}" : ""), ct);
            return Emit(p, all, () => Output.Table(["NAME", "ID", "NETWORK", "STATE", "LOCATION", "CLIENTS", "HOSTNAME", "PUBLIC IP", "OFFSET MS", "VERSION"],
                all.Select(x => new[] { x.Name, x.Id, x.Network, x.State, x.Location, x.Clients?.ToString(System.Globalization.CultureInfo.InvariantCulture), x.Hostname, x.PublicIp,
                    x.TimeOffsetMs?.ToString(System.Globalization.CultureInfo.InvariantCulture), x.Version })));
        }));
        var showName = new Argument<string>("connector") { Description = "Connector name or id" };
        group.Subcommands.Add(Action(new Command("show", "Show every detail the controller keeps about a connector.") { showName }, async (p, c, ct) =>
        {
            var x = await c.GetAsync<ConnectorView>($"/api/v1/connectors/{Esc(p.GetValue(showName))}", ct);
            if (p.GetValue(Json))
            {
                return EmitOne(x);
            }
            Console.WriteLine($"name:          {x.Name} ({x.Id})");
            Console.WriteLine($"network:       {x.Network}");
            Console.WriteLine($"state:         {x.State}" + (x.State == "online" ? $" since {x.OnlineSince:u} (up {x.UptimeSeconds}s)" : $" since {x.OfflineSince:u} (down {x.DowntimeSeconds}s)"));
            Console.WriteLine($"time offset:   {(x.TimeOffsetMs is null ? "-" : $"{x.TimeOffsetMs} ms ({x.TimeOffsetStatus})")}");
            Console.WriteLine($"stun:          {x.Stun.Status}{(x.Stun.MappedAddress is null ? "" : " " + x.Stun.MappedAddress)}{(x.Stun.Error is null ? "" : " (" + x.Stun.Error + ")")}");
            Console.WriteLine($"hostname:      {x.Hostname ?? "-"}");
            Console.WriteLine($"public IP:     {x.PublicIp ?? "-"}");
            Console.WriteLine($"private IPs:   {(x.PrivateIps.Length == 0 ? "-" : string.Join(", ", x.PrivateIps))}");
            Console.WriteLine($"version:       {x.Version ?? "-"}");
            Console.WriteLine($"last seen:     {(x.LastSeen is null ? "never" : x.LastSeen.Value.ToString("u", System.Globalization.CultureInfo.InvariantCulture))}");
            Console.WriteLine($"location:      {x.Location ?? "-"}");
            Console.WriteLine($"load:          {(x.Clients is null ? "-" : $"{x.Clients} clients, {x.Flows} flows")}");
            Console.WriteLine("resources:");
            foreach (var r in x.Resources)
            {
                Console.WriteLine($"  {r.Resource,-20} {r.Status,-12} {r.Detail}");
            }
            Console.WriteLine("history:");
            foreach (var h in x.History)
            {
                Console.WriteLine($"  {h.At:u}  {h.State,-8} {h.Reason}");
            }
            Console.WriteLine("events:");
            foreach (var e in x.Events)
            {
                Console.WriteLine($"  {e.At:u}  {e.Kind,-14} {e.Message}");
            }
            return 0;
        }));
        var removeName = new Argument<string>("connector") { Description = "Connector name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a connector; its tokens stop working.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/connectors/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"connector '{p.GetValue(removeName)}' removed");
        }));
        return group;
    }

    private static Command Relays()
    {
        var group = new Command("relay", "Relays: the always-available path, and STUN servers.");
        var name = new Option<string?>("--name") { Description = "Relay name (generated when omitted)" };
        var location = new Option<string?>("--location") { Description = "REGION or LAT,LON" };
        group.Subcommands.Add(Action(new Command("provision", "Provision a relay and print its token pair (shown once) and how to run it.") { name, location }, async (p, c, ct) =>
        {
            var result = await c.PostAsync<RelayProvisioned>("/api/v1/relays", new RelayProvisionRequest(p.GetValue(name), p.GetValue(location)), ct);
            return PrintProvisioned(p, $"Relay '{result.Relay.Name}' ({result.Relay.Id}) provisioned.", "relay", result.Tokens, result.Deploy);
        }));
        group.Subcommands.Add(Action(new Command("list", "List relays with their health and load."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<RelayView[]>("/api/v1/relays", ct);
            return Emit(p, all, () => Output.Table(["NAME", "ID", "STATE", "TCP", "STUN", "PEERS", "PKT/S", "REFUSED"],
                all.Select(r => new[] { r.Name, r.Id, r.State, string.Join(",", r.TcpEndpoints), string.Join(",", r.StunEndpoints), r.Peers.ToString(System.Globalization.CultureInfo.InvariantCulture), r.PacketsPerSecond.ToString("0.#", System.Globalization.CultureInfo.InvariantCulture), r.Refused.ToString(System.Globalization.CultureInfo.InvariantCulture) })));
        }));
        var showName = new Argument<string>("relay") { Description = "Relay name or id" };
        group.Subcommands.Add(Action(new Command("show", "Show a relay's health, load and events.") { showName }, async (p, c, ct) =>
            EmitOne(await c.GetAsync<RelayView>($"/api/v1/relays/{Esc(p.GetValue(showName))}", ct))));
        var removeName = new Argument<string>("relay") { Description = "Relay name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a relay; its tokens stop working.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/relays/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"relay '{p.GetValue(removeName)}' removed");
        }));
        return group;
    }

    private static Command Resources()
    {
        var group = new Command("resource", "Resources: what connectors give access to.");
        var network = new Option<string>("--network") { Description = "Remote network the resource is in", Required = true };
        var address = new Argument<string>("address") { Description = "DNS name, *.wildcard name, IP address or CIDR" };
        var name = new Option<string?>("--name") { Description = "Resource name (derived from the address when omitted)" };
        var tcp = new Option<string?>("--tcp") { Description = "Allowed TCP ports: 'all', 'none' or a list like 22,8000-8100" };
        var udp = new Option<string?>("--udp") { Description = "Allowed UDP ports: 'all', 'none' or a list like 53" };
        group.Subcommands.Add(Action(new Command("add", "Add a resource to a network. With neither --tcp nor --udp, all ports of both are allowed.") { address, network, name, tcp, udp }, async (p, c, ct) =>
        {
            var r = await c.PostAsync<ResourceView>("/api/v1/resources", new ResourceCreateRequest(p.GetValue(network)!, p.GetValue(address)!, p.GetValue(name), p.GetValue(tcp), p.GetValue(udp)), ct);
            return Emit(p, r, () => PrintResources([r]));
        }));
        var listNetwork = new Option<string?>("--network") { Description = "Only resources of this network" };
        group.Subcommands.Add(Action(new Command("list", "List resources.") { listNetwork }, async (p, c, ct) =>
        {
            var all = await c.GetAsync<ResourceView[]>("/api/v1/resources" + (p.GetValue(listNetwork) is { } n ? $"?network={Esc(n)}" : ""), ct);
            return Emit(p, all, () => PrintResources(all));
        }));
        var setName = new Argument<string>("resource") { Description = "Resource name or id" };
        var newName = new Option<string?>("--name") { Description = "New name" };
        var newAddress = new Option<string?>("--address") { Description = "New address: DNS name, *.wildcard name, IP address or CIDR" };
        group.Subcommands.Add(Action(new Command("set", "Change a resource: its name, address or ports (others stay as they are); live flows no longer allowed are closed.") { setName, newName, newAddress, tcp, udp }, async (p, c, ct) =>
        {
            var r = await c.PatchAsync<ResourceView>($"/api/v1/resources/{Esc(p.GetValue(setName))}", new ResourceUpdateRequest(p.GetValue(newName), p.GetValue(newAddress), p.GetValue(tcp), p.GetValue(udp)), ct);
            return Emit(p, r, () => PrintResources([r]));
        }));
        var removeName = new Argument<string>("resource") { Description = "Resource name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a resource and the policies granting it.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/resources/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"resource '{p.GetValue(removeName)}' removed");
        }));
        return group;
    }

    private static void PrintResources(ResourceView[] all)
        => Output.Table(["NAME", "ID", "NETWORK", "ADDRESS", "KIND", "TCP", "UDP", "WARNING"], all.Select(r => new[] { r.Name, r.Id, r.Network, r.Address, r.Kind, r.Tcp, r.Udp, r.Warning }));

    private static Command Groups()
    {
        var group = new Command("group", "Groups of users; policies grant groups access.");
        var name = new Argument<string>("name") { Description = "Group name" };
        group.Subcommands.Add(Action(new Command("create", "Create a group.") { name }, async (p, c, ct) =>
        {
            var g = await c.PostAsync<GroupView>("/api/v1/groups", new GroupCreateRequest(p.GetValue(name)!), ct);
            return Emit(p, g, () => PrintGroups([g]));
        }));
        group.Subcommands.Add(Action(new Command("list", "List groups with their members."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<GroupView[]>("/api/v1/groups", ct);
            return Emit(p, all, () => PrintGroups(all));
        }));
        var deleteName = new Argument<string>("group") { Description = "Group name or id" };
        group.Subcommands.Add(Action(new Command("delete", "Delete a group and its policies.") { deleteName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/groups/{Esc(p.GetValue(deleteName))}", ct);
            return Done(p, $"group '{p.GetValue(deleteName)}' deleted");
        }));
        var g1 = new Argument<string>("group") { Description = "Group name or id" };
        var u1 = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("add-member", "Add a user to a group.") { g1, u1 }, async (p, c, ct) =>
        {
            await c.SendAsync<JsonElement?>(HttpMethod.Post, $"/api/v1/groups/{Esc(p.GetValue(g1))}/members", new GroupMemberRequest(p.GetValue(u1)!), ct);
            return Done(p, $"user '{p.GetValue(u1)}' added to group '{p.GetValue(g1)}'");
        }));
        var g2 = new Argument<string>("group") { Description = "Group name or id" };
        var u2 = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("remove-member", "Remove a user from a group.") { g2, u2 }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/groups/{Esc(p.GetValue(g2))}/members/{Esc(p.GetValue(u2))}", ct);
            return Done(p, $"user '{p.GetValue(u2)}' removed from group '{p.GetValue(g2)}'");
        }));
        return group;
    }

    private static void PrintGroups(GroupView[] all)
        => Output.Table(["NAME", "ID", "MEMBERS"], all.Select(g => new[] { g.Name, g.Id, string.Join(",", g.Members) }));

    private static Command Users()
    {
        var group = new Command("user", "Users who sign in to clients with a password.");
        var name = new Argument<string>("name") { Description = "User name" };
        var passwordFile = new Option<string?>("--password-file") { Description = "File holding the password (or FERRY_PASSWORD)" };
        group.Subcommands.Add(Action(new Command("create", "Create a user.") { name, passwordFile }, async (p, c, ct) =>
        {
            var password = p.GetValue(passwordFile) is { } f ? File.ReadAllText(f).Trim() : Env.Get("FERRY_PASSWORD")
                ?? throw new CliException("give the password with --password-file or FERRY_PASSWORD", 2);
            var u = await c.PostAsync<UserView>("/api/v1/users", new UserCreateRequest(p.GetValue(name)!, password), ct);
            return Emit(p, u, () => PrintUsers([u]));
        }));
        group.Subcommands.Add(Action(new Command("list", "List users."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<UserView[]>("/api/v1/users", ct);
            return Emit(p, all, () => PrintUsers(all));
        }));
        var setName = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("set-password", "Set a user's password (signed-in devices stay signed in).") { setName, passwordFile }, async (p, c, ct) =>
        {
            var password = p.GetValue(passwordFile) is { } f ? File.ReadAllText(f).Trim() : Env.Get("FERRY_PASSWORD")
                ?? throw new CliException("give the password with --password-file or FERRY_PASSWORD", 2);
            await c.SendAsync<JsonElement?>(HttpMethod.Patch, $"/api/v1/users/{Esc(p.GetValue(setName))}", new UserUpdateRequest(password), ct);
            return Done(p, $"password of user '{p.GetValue(setName)}' set");
        }));
        var removeName = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a user, its memberships and devices.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/users/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"user '{p.GetValue(removeName)}' removed");
        }));
        var showName = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("show", "Show a user: groups, second factor, and recent security events.") { showName }, async (p, c, ct) =>
        {
            var u = await c.GetAsync<UserDetailView>($"/api/v1/users/{Esc(p.GetValue(showName))}", ct);
            return Emit(p, u, () =>
            {
                Console.WriteLine($"user:          {u.Name} ({u.Id})");
                Console.WriteLine($"groups:        {string.Join(", ", u.Groups)}");
                Console.WriteLine($"second factor: {(u.MfaEnrolledAt is { } at ? $"TOTP, enrolled {at.ToString("u", System.Globalization.CultureInfo.InvariantCulture)}" : "none")}");
                Output.Table(["AT", "EVENT", "MESSAGE"], u.Events.Select(e => new[] { e.At.ToString("u", System.Globalization.CultureInfo.InvariantCulture), e.Kind, e.Message }));
            });
        }));
        group.Subcommands.Add(UserMfa());
        return group;
    }

    private static Command Operators()
    {
        var group = new Command("operator", "Operators who sign in to the admin console (password and TOTP).");
        var name = new Argument<string>("name") { Description = "Operator name" };
        var passwordFile = new Option<string?>("--password-file") { Description = "File holding the password, 12 characters or more (or FERRY_PASSWORD)" };
        group.Subcommands.Add(Action(new Command("create", "Create an operator and print its TOTP secret (shown once) for an authenticator app.") { name, passwordFile }, async (p, c, ct) =>
        {
            var password = p.GetValue(passwordFile) is { } f ? File.ReadAllText(f).Trim() : Env.Get("FERRY_PASSWORD")
                ?? throw new CliException("give the password with --password-file or FERRY_PASSWORD", 2);
            var created = await c.PostAsync<OperatorCreated>("/api/v1/operators", new OperatorCreateRequest(p.GetValue(name)!, password), ct);
            return Emit(p, created, () =>
            {
                Console.WriteLine($"operator '{created.Operator.Name}' ({created.Operator.Id}) created.");
                Console.WriteLine($"TOTP secret (shown once; type it into an authenticator app): {created.TotpSecret}");
                Console.WriteLine($"or open: {created.TotpUri}");
            });
        }));
        group.Subcommands.Add(Action(new Command("list", "List operators."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<OperatorView[]>("/api/v1/operators", ct);
            return Emit(p, all, () => Output.Table(["NAME", "ID", "LAST SIGN-IN"], all.Select(o => new[] { o.Name, o.Id, o.LastSignIn?.ToString("u", System.Globalization.CultureInfo.InvariantCulture) ?? "never" })));
        }));
        var removeName = new Argument<string>("operator") { Description = "Operator name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove an operator.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/operators/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"operator '{p.GetValue(removeName)}' removed");
        }));
        return group;
    }

    private static void PrintUsers(UserView[] all)
        => Output.Table(["NAME", "ID", "GROUPS", "MFA"], all.Select(u => new[] { u.Name, u.Id, string.Join(",", u.Groups), u.MfaEnrolled ? "totp" : "none" }));

    /// <summary>'ferry admin user mfa enrol|reset USER': a user's TOTP second factor, for networks created with --require-mfa.</summary>
    private static Command UserMfa()
    {
        var group = new Command("mfa", "A user's TOTP second factor, needed for networks that require one.");
        var enrolName = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("enrol", "Enrol a TOTP second factor for a user and print its secret (shown once) for an authenticator app.") { enrolName }, async (p, c, ct) =>
        {
            var enrolled = await c.PostAsync<UserMfaEnrolled>($"/api/v1/users/{Esc(p.GetValue(enrolName))}/mfa", new { }, ct);
            return Emit(p, enrolled, () =>
            {
                Console.WriteLine($"second factor enrolled for user '{enrolled.User}'.");
                Console.WriteLine($"TOTP secret (shown once; give it to the user for an authenticator app): {enrolled.TotpSecret}");
                Console.WriteLine($"or open: {enrolled.TotpUri}");
            });
        }));
        var resetName = new Argument<string>("user") { Description = "User name or id" };
        group.Subcommands.Add(Action(new Command("reset", "Remove a user's second factor (a lost phone): its devices lose access to networks that require one until it is enrolled again.") { resetName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/users/{Esc(p.GetValue(resetName))}/mfa", ct);
            return Done(p, $"second factor of user '{p.GetValue(resetName)}' removed");
        }));
        return group;
    }

    private static Command ServiceAccounts()
    {
        var group = new Command("service-account", "Service accounts: identities for headless clients.");
        var name = new Argument<string>("name") { Description = "Service account name" };
        group.Subcommands.Add(Action(new Command("create", "Create a service account and print its key (shown once).") { name }, async (p, c, ct) =>
        {
            var created = await c.PostAsync<ServiceAccountCreated>("/api/v1/service-accounts", new ServiceAccountCreateRequest(p.GetValue(name)!), ct);
            return Emit(p, created, () =>
            {
                Console.WriteLine($"Service account '{created.Account.Name}' ({created.Account.Id}) created. Its key, shown this once:");
                Console.WriteLine(created.Key);
            });
        }));
        group.Subcommands.Add(Action(new Command("list", "List service accounts."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<ServiceAccountView[]>("/api/v1/service-accounts", ct);
            return Emit(p, all, () => Output.Table(["NAME", "ID", "CREATED"], all.Select(s => new[] { s.Name, s.Id, s.CreatedAt.ToString("u", System.Globalization.CultureInfo.InvariantCulture) })));
        }));
        var removeName = new Argument<string>("service-account") { Description = "Service account name or id" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a service account; its key stops working.") { removeName }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/service-accounts/{Esc(p.GetValue(removeName))}", ct);
            return Done(p, $"service account '{p.GetValue(removeName)}' removed");
        }));
        return group;
    }

    /// <summary>"connector/cn_x direct 1.2 ms; …": the kind and round trip of each path a device's client reported.</summary>
    private static string PathSummary(Ferry.Core.ControlPlane.PathStatus[]? paths)
        => paths is { Length: > 0 }
            ? string.Join("; ", paths.Select(x => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{x.Connector} {x.Kind}{(x.RttMs is { } rtt ? $" {rtt:0.#} ms" : "")}")))
            : "-";

    private static Command Devices()
    {
        var group = new Command("device", "Devices: the clients that signed in, one per machine and owner.");
        group.Subcommands.Add(Action(new Command("list", "List signed-in devices, their owners and whether they are online."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<DeviceView[]>("/api/v1/devices", ct);
            return Emit(p, all, () => Output.Table(["ID", "NAME", "OWNER", "ONLINE", "SESSION EXPIRES", "PATHS"],
                all.Select(d => new[] { d.Id, d.Name, $"{d.OwnerKind} {d.Owner}", d.Online ? "yes" : "no", d.SessionExpiresAt.ToString("u", System.Globalization.CultureInfo.InvariantCulture), PathSummary(d.Paths) })));
        }));
        var id = new Argument<string>("device") { Description = "Device id (dv_…, see 'ferry admin device list')" };
        group.Subcommands.Add(Action(new Command("remove", "Remove a device: its session ends, its live flows close and its certificate is refused. Its owner can sign in again; remove the user or service account to stop that.") { id }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/devices/{Esc(p.GetValue(id))}", ct);
            return Done(p, $"device '{p.GetValue(id)}' removed");
        }));
        return group;
    }

    private static Command Policies()
    {
        var group = new Command("policy", "Policies: which group or service account may reach which resource.");
        var resource = new Argument<string>("resource") { Description = "Resource name or id" };
        var toGroup = new Option<string?>("--group") { Description = "Grant to this group" };
        var toAccount = new Option<string?>("--service-account") { Description = "Grant to this service account" };
        group.Subcommands.Add(Action(new Command("grant", "Grant a group or service account access to a resource.") { resource, toGroup, toAccount }, async (p, c, ct) =>
        {
            var policy = await c.PostAsync<PolicyView>("/api/v1/policies", new PolicyGrantRequest(p.GetValue(resource)!, p.GetValue(toGroup), p.GetValue(toAccount)), ct);
            return Emit(p, policy, () => PrintPolicies([policy]));
        }));
        var id = new Argument<string>("policy") { Description = "Policy id (see 'policy list')" };
        group.Subcommands.Add(Action(new Command("revoke", "Revoke a policy.") { id }, async (p, c, ct) =>
        {
            await c.DeleteAsync($"/api/v1/policies/{Esc(p.GetValue(id))}", ct);
            return Done(p, $"policy '{p.GetValue(id)}' revoked");
        }));
        group.Subcommands.Add(Action(new Command("list", "List policies."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<PolicyView[]>("/api/v1/policies", ct);
            return Emit(p, all, () => PrintPolicies(all));
        }));
        return group;
    }

    private static void PrintPolicies(PolicyView[] all)
        => Output.Table(["ID", "RESOURCE", "NETWORK", "GRANTEE"], all.Select(x => new[] { x.Id, x.Resource, x.Network, x.Group is not null ? "group " + x.Group : "service account " + x.ServiceAccount }));

    private static Command Audit()
    {
        var group = new Command("audit", "The audit log of admin changes.");
        group.Subcommands.Add(Action(new Command("list", "List recent admin changes."), async (p, c, ct) =>
        {
            var all = await c.GetAsync<AuditView[]>("/api/v1/audit", ct);
            return Emit(p, all, () => Output.Table(["AT", "ACTOR", "ACTION", "TARGET"], all.Select(a => new[] { a.At.ToString("u", System.Globalization.CultureInfo.InvariantCulture), a.Actor, a.Action, a.Target })));
        }));
        return group;
    }

    private static Command SecurityEvents()
    {
        var kind = new Option<string?>("--kind") { Description = "Only this kind: token-reuse, token-in-use, clock-refused, token-refused, console-login-failed, client-login-failed, api-key-refused, mfa-failed" };
        var since = new Option<string?>("--since") { Description = "Only events since this time: ISO 8601 (2026-01-31T12:00:00Z) or an age (30m, 12h, 7d)" };
        var limit = new Option<int>("--limit") { Description = "At most this many, newest first (1-1000)", DefaultValueFactory = _ => 100 };
        return Action(new Command("security-events", "Refused tokens, sessions, sign-ins and API keys, newest first.") { kind, since, limit }, async (p, c, ct) =>
        {
            var query = new List<string> { $"limit={p.GetValue(limit)}" };
            if (p.GetValue(kind) is { Length: > 0 } k)
            {
                query.Add("kind=" + Uri.EscapeDataString(k));
            }
            if (p.GetValue(since) is { Length: > 0 } s)
            {
                query.Add("since=" + Uri.EscapeDataString(SinceToIso(s)));
            }
            var all = await c.GetAsync<SecurityEventView[]>("/api/v1/security-events?" + string.Join('&', query), ct);
            return Emit(p, all, () => Output.Table(["AT", "KIND", "SUBJECT", "FROM", "MESSAGE"],
                all.Select(e => new[] { e.At.ToString("u", System.Globalization.CultureInfo.InvariantCulture), e.Kind, e.Subject, e.Source, e.Message })));
        });
    }

    /// <summary>An age ("30m", "12h", "7d") becomes the time that long ago; anything else goes to the controller as given, which checks it.</summary>
    internal static string SinceToIso(string since)
    {
        if (since.Length >= 2 && double.TryParse(since[..^1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var amount) && amount >= 0)
        {
            TimeSpan? age = since[^1] switch
            {
                's' => TimeSpan.FromSeconds(amount),
                'm' => TimeSpan.FromMinutes(amount),
                'h' => TimeSpan.FromHours(amount),
                'd' => TimeSpan.FromDays(amount),
                _ => null,
            };
            if (age is { } a)
            {
                return (DateTimeOffset.UtcNow - a).ToString("O", System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        return since;
    }

    // ---- plumbing

    /// <summary>With --json, exactly the tokens file the daemon's --tokens reads; otherwise the tokens once, with ways to run the daemon.</summary>
    private static int PrintProvisioned(ParseResult p, string headline, string part, Core.Tokens.TokenFile tokens, DeployInstructions deploy)
    {
        if (p.GetValue(Json))
        {
            Console.WriteLine(tokens.ToJson());
            return 0;
        }
        Console.WriteLine(headline);
        Console.WriteLine();
        Console.WriteLine($"Its tokens are shown this once. Save them as the {part}'s tokens file (mode 0600), e.g. {part}-tokens.json:");
        Console.WriteLine(tokens.ToJson());
        Console.WriteLine();
        Console.WriteLine("Run it as a plain process:");
        Console.WriteLine("  " + deploy.Plain);
        Console.WriteLine();
        Console.WriteLine("Or with systemd:");
        Console.WriteLine(deploy.Systemd);
        Console.WriteLine();
        Console.WriteLine("Or in a container:");
        Console.WriteLine("  " + deploy.Container);
        Console.WriteLine();
        Console.WriteLine("Or with Helm (the chart in deploy/helm/ferry):");
        Console.WriteLine(deploy.Helm);
        return 0;
    }

    private static Command Action(Command command, Func<ParseResult, AdminClient, CancellationToken, Task<int>> body)
    {
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            using var client = CreateClient(parse);
            return await body(parse, client, ct);
        }));
        return command;
    }

    private static AdminClient CreateClient(ParseResult parse)
    {
        var url = parse.GetValue(Controller) ?? Env.Get("FERRY_CONTROLLER")
            ?? throw new CliException("no controller URL: pass --controller or set FERRY_CONTROLLER", 2);
        var key = parse.GetValue(ApiKey) ?? Env.Get("FERRY_API_KEY")
            ?? throw new CliException("no admin API key: pass --api-key or set FERRY_API_KEY (see the controller's admin.key)", 2);
        var trust = ControllerTrust.Create(parse.GetValue(Fingerprint) ?? Env.Get("FERRY_CONTROLLER_FINGERPRINT"), parse.GetValue(Ca));
        return new AdminClient(ConnectorCommand.ParseUrl(url), key, trust);
    }

    private static int Emit<T>(ParseResult p, T value, Action human)
    {
        if (p.GetValue(Json))
        {
            Console.WriteLine(JsonSerializer.Serialize(value, Output.Json));
        }
        else
        {
            human();
        }
        return 0;
    }

    private static int EmitOne<T>(T value)
    {
        Console.WriteLine(JsonSerializer.Serialize(value, Output.Json));
        return 0;
    }

    private static int Done(ParseResult p, string message)
    {
        Console.WriteLine(p.GetValue(Json) ? JsonSerializer.Serialize(new { ok = true, message }, Output.Json) : message);
        return 0;
    }

    private static string Esc(string? value) => Uri.EscapeDataString(value ?? "");
}
