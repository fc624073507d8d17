// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title DatanetRegistry: curated datasets (Datanets) and the contributions they are made of.
/// @notice A Datanet has a curator and a metadata CID. Anyone contributes data by CID with its size; the curator
///         accepts or rejects each contribution once. An accepted contribution's weight is its size; a Datanet's
///         total weight is the sum over its accepted contributions, so contributor shares are weight / total.
///         Data itself never touches the chain, only CIDs.
contract DatanetRegistry {
    enum Status {
        None,
        Pending,
        Accepted,
        Rejected
    }

    struct Datanet {
        address curator;
        uint64 createdAt;
        uint32 contributionCount;
        uint256 totalAcceptedWeight;
        string metadataCid;
    }

    struct Contribution {
        address contributor;
        uint64 size;
        Status status;
        string dataCid;
    }

    uint256 public datanetCount;
    mapping(uint256 => Datanet) private _datanets;
    mapping(uint256 => mapping(uint256 => Contribution)) private _contributions;

    event DatanetCreated(uint256 indexed datanetId, address indexed curator, string metadataCid);
    event CuratorChanged(uint256 indexed datanetId, address indexed previousCurator, address indexed newCurator);
    event ContributionSubmitted(
        uint256 indexed datanetId, uint256 indexed contributionId, address indexed contributor, string dataCid, uint64 size
    );
    event ContributionAccepted(uint256 indexed datanetId, uint256 indexed contributionId, uint64 weight);
    event ContributionRejected(uint256 indexed datanetId, uint256 indexed contributionId);

    error EmptyCid();
    error ZeroSize();
    error ZeroAddress();
    error UnknownDatanet(uint256 datanetId);
    error UnknownContribution(uint256 datanetId, uint256 contributionId);
    error NotCurator(uint256 datanetId, address caller);
    error AlreadyReviewed(uint256 datanetId, uint256 contributionId);

    modifier onlyCurator(uint256 datanetId) {
        address curator = _datanets[datanetId].curator;
        if (curator == address(0)) revert UnknownDatanet(datanetId);
        if (curator != msg.sender) revert NotCurator(datanetId, msg.sender);
        _;
    }

    /// @notice Create a Datanet curated by the caller. Ids start at 1.
    function createDatanet(string calldata metadataCid) external returns (uint256 datanetId) {
        if (bytes(metadataCid).length == 0) revert EmptyCid();
        datanetId = ++datanetCount;
        Datanet storage d = _datanets[datanetId];
        d.curator = msg.sender;
        d.createdAt = uint64(block.timestamp);
        d.metadataCid = metadataCid;
        emit DatanetCreated(datanetId, msg.sender, metadataCid);
    }

    /// @notice Hand curation of a Datanet to `newCurator` (curator only).
    function setCurator(uint256 datanetId, address newCurator) external onlyCurator(datanetId) {
        if (newCurator == address(0)) revert ZeroAddress();
        _datanets[datanetId].curator = newCurator;
        emit CuratorChanged(datanetId, msg.sender, newCurator);
    }

    /// @notice Contribute data (by CID, `size` in bytes) to a Datanet; pending until the curator reviews it.
    function contribute(uint256 datanetId, string calldata dataCid, uint64 size)
        external
        returns (uint256 contributionId)
    {
        Datanet storage d = _datanets[datanetId];
        if (d.curator == address(0)) revert UnknownDatanet(datanetId);
        if (bytes(dataCid).length == 0) revert EmptyCid();
        if (size == 0) revert ZeroSize();
        contributionId = ++d.contributionCount;
        _contributions[datanetId][contributionId] =
            Contribution({contributor: msg.sender, size: size, status: Status.Pending, dataCid: dataCid});
        emit ContributionSubmitted(datanetId, contributionId, msg.sender, dataCid, size);
    }

    /// @notice Accept a pending contribution: its size becomes its weight (curator only).
    function accept(uint256 datanetId, uint256 contributionId) external onlyCurator(datanetId) {
        Contribution storage c = _pending(datanetId, contributionId);
        c.status = Status.Accepted;
        _datanets[datanetId].totalAcceptedWeight += c.size;
        emit ContributionAccepted(datanetId, contributionId, c.size);
    }

    /// @notice Reject a pending contribution (curator only). A rejected contribution has weight 0.
    function reject(uint256 datanetId, uint256 contributionId) external onlyCurator(datanetId) {
        Contribution storage c = _pending(datanetId, contributionId);
        c.status = Status.Rejected;
        emit ContributionRejected(datanetId, contributionId);
    }

    function exists(uint256 datanetId) public view returns (bool) {
        return _datanets[datanetId].curator != address(0);
    }

    function getDatanet(uint256 datanetId) external view returns (Datanet memory) {
        if (!exists(datanetId)) revert UnknownDatanet(datanetId);
        return _datanets[datanetId];
    }

    function getContribution(uint256 datanetId, uint256 contributionId) external view returns (Contribution memory) {
        Contribution storage c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        return c;
    }

    /// @notice The weight of a contribution: its size once accepted, else 0.
    function weightOf(uint256 datanetId, uint256 contributionId) external view returns (uint256) {
        Contribution storage c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        return c.status == Status.Accepted ? c.size : 0;
    }

    function _pending(uint256 datanetId, uint256 contributionId) private view returns (Contribution storage c) {
        c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        if (c.status != Status.Pending) revert AlreadyReviewed(datanetId, contributionId);
    }
}
